"""The run's copy of its text model's architecture and tokenizer: `W/text_model/`.

A trained checkpoint holds every weight, but the model's shapes come from the
text checkpoint's `config.json` and queries are tokenised with its vocabulary.
Training copies those files (not the weights) into the workdir once, at its
start (`save`), so that evaluation, indexing, search and the app build the model
(`inference_config`) and tokenise (`load_tokenizer`) from the workdir alone: a
workdir copied to another machine works without the BERT folder it was trained
from. A workdir trained before this copy existed falls back to that folder.
"""

from __future__ import annotations

import os
import tempfile

from hammer_jax import files
from hammer_jax import workdir as layout
from hammer_jax.data import prepared_data
from hammer_jax.errors import HammerError
from hammer_jax.model import pretrained
from hammer_jax.run_config import RestoreError


def save(config, workdir: str) -> None:
  """Copies the text checkpoint's config.json and tokenizer files to `W/text_model/` (process 0), once.

  `config.json` is written last, so a folder that has it is complete.
  """
  import jax
  checkpoint = config.model.text_checkpoint
  folder = layout.text_model_dir(workdir)
  if not checkpoint or jax.process_index() > 0 or files.exists(files.join(folder, "config.json")):
    return
  pretrained.copy_inference_files(checkpoint, folder)


def inference_config(config, workdir: str):
  """A copy of `config` whose text model is described by `W/text_model/config.json` (not by the BERT folder).

  `build.text_bert_config` reads `config.model.bert` when there is no
  `text_checkpoint`, and nothing else of the checkpoint is needed once the
  weights come from the run's own checkpoint.
  """
  import dataclasses
  import ml_collections
  from hammer_jax.model.bert import BertConfig
  if not config.model.text_checkpoint:
    return config
  folder = layout.text_model_dir(workdir)
  if not files.exists(files.join(folder, "config.json")):
    try:
      pretrained.resolve_checkpoint_dir(config.model.text_checkpoint, need_weights=False)
    except pretrained.CheckpointError as e:
      raise RestoreError(f"{folder}: missing, and the text checkpoint this run was trained from is gone too ({e}); "
                         f"copy that checkpoint's config.json and vocab.txt into {folder}") from None
    return config  # A run from before W/text_model: its checkpoint folder is still here.
  try:
    bert = BertConfig.from_hf_dict(pretrained.read_bert_config(folder))
  except (pretrained.CheckpointError, ValueError) as e:
    raise RestoreError(f"{folder}/config.json: not a BERT config ({e}); copy it back from the text checkpoint "
                       f"{config.model.text_checkpoint}") from None
  out = config.copy_and_resolve_references()
  out.model.text_checkpoint = None
  out.model.bert = ml_collections.ConfigDict(dataclasses.asdict(bert))
  return out


def load_tokenizer(workdir: str, config, data: prepared_data.PreparedData):
  """The tokenizer `data` was prepared with, found by its vocabulary fingerprint.

  Tried in order: `W/text_model/` (a local copy when W is on a bucket), the
  folder the data was prepared with, the config's checkpoint, the default MiniLM.
  """
  manifest = data.manifest
  tried = []
  for ckpt in [_local_text_model(workdir)] + list(dict.fromkeys(filter(None, (
      manifest.get("text_checkpoint"), config.model.text_checkpoint, pretrained.DEFAULT_CHECKPOINT)))):
    if ckpt is None:
      continue
    try:
      if pretrained.vocab_fingerprint(ckpt) == manifest["vocab_sha256"]:
        return pretrained.load_tokenizer(ckpt)
      tried.append(f"{ckpt}: other vocabulary")
    except pretrained.CheckpointError as e:
      tried.append(str(e))
  raise HammerError(f"no tokenizer with vocabulary {manifest['vocab_sha256'][:12]}, which {data.path} was prepared "
                    f"with ({'; '.join(tried)})")


def _local_text_model(workdir: str) -> str | None:
  """`W/text_model/` as a local folder (copied to a temporary one when W is remote); None when W has none."""
  folder = layout.text_model_dir(workdir)
  if not files.exists(files.join(folder, "config.json")):
    return None
  if not files.is_remote(folder):
    return files.native(folder)
  local = tempfile.mkdtemp(prefix="hammer_jax-text_model-")
  for name in files.listdir(folder):
    files.copy_file(files.join(folder, name), os.path.join(local, name))
  return local
