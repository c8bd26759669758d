"""A training workdir: its config, its data, its evaluation folders, and restoring its model.

  W/config.json          the resolved config of the run (`save_config`, `load_config`)
  W/checkpoints/<step>/  Orbax checkpoints of the train state
  W/tensorboard/         scalars and the config as hparams
  W/eval/<name>_step<N>/ one evaluation (`eval_dir`): predictions, metrics, plots
  W/data/                the demo's synthetic corpus (built by its first run only)
  W/search_index/        saved corpora for search

`restore(W)` is what the eval binary and search start from: every failure is one
line that says what to run. `config.json` is written only once the run it
describes can continue the workdir's checkpoints (`check_resumable`, then the
training loop's restore), so a run with an incompatible config changes nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hammer_jax import files
from hammer_jax.data import prepared_data
from hammer_jax.errors import HammerError
from hammer_jax.model import build, hammer


class RestoreError(HammerError, RuntimeError):
  """The workdir cannot give a trained model (one line, with what to run)."""


def save_config(config, workdir: str) -> str:
  """Writes the resolved config to `W/config.json` (atomically; process 0)."""
  import jax
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0:
    files.atomic_write(path, config.to_json_best_effort(indent=1, sort_keys=True))
  return path


def load_config(workdir: str):
  """The config `W` was trained with; fields added to configs/base.py since then get their defaults."""
  path = os.path.join(workdir, "config.json")
  if not files.exists(path):
    raise RestoreError(f"{workdir}: no config.json (not a training workdir; run hammer_jax.main first)")
  try:
    saved = json.loads(files.read_text(path))
    if not isinstance(saved, dict):
      raise ValueError(f"a JSON {type(saved).__name__}, not an object")
  except (ValueError, UnicodeDecodeError) as e:  # json's errors are ValueErrors
    raise RestoreError(
        f"{path}: damaged, not the JSON config of a run ({e}); copy it back from a backup, or resume the run with "
        f"the config and flags it was trained with (python -m hammer_jax.main --workdir={workdir} --config=...), "
        "which rewrites it once the checkpoint restores") from None
  return _with_defaults(saved)


def _with_defaults(saved: dict):
  """A ConfigDict of a config's JSON, with the fields it lacks from configs/base.py."""
  import ml_collections
  from configs import base
  config = ml_collections.ConfigDict(saved)
  _fill_defaults(config, base.get_base_config())
  return config


def config_differences(saved, config) -> list[str]:
  """"field: saved -> new" for each field whose value differs (as config.json writes them, defaults filled)."""
  def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
      out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out

  old, new = (flat(json.loads(_with_defaults(json.loads(c.to_json_best_effort())).to_json())) for c in (saved, config))
  return [f"{k}: {old.get(k, '(none)')} -> {new.get(k, '(none)')}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def check_resumable(config, workdir: str) -> None:
  """Refuses, before anything is written, a run that would replace the demo corpus W's checkpoints were trained on.

  The demo builds its corpus under `W/data` from `data.synthetic` and the text
  checkpoint's tokenizer; a run with others would rebuild it in place. Every
  other incompatibility shows when the training loop restores the checkpoint,
  which it does before it writes config.json.
  """
  from hammer_jax.train import checkpointing
  uses_demo = lambda c: c.data.source == "synthetic" and not c.data.prepared_dir
  if not uses_demo(config) or not files.exists(os.path.join(workdir, "config.json")):
    return
  try:
    saved = load_config(workdir)
  except RestoreError:
    return  # Nothing to compare with; the restore decides.
  ckpt_dir = checkpoint_dir(workdir)
  if not uses_demo(saved) or not checkpointing.has_checkpoints(ckpt_dir):
    return
  corpus_fields = ("data.synthetic", "model.text_checkpoint")
  changed = [d for d in config_differences(saved, config) if d.startswith(corpus_fields)]
  if changed:
    raise RestoreError(
        f"{demo_data_dir(workdir)}: the demo corpus this workdir's checkpoints were trained on would be rebuilt "
        f"({'; '.join(changed)}); nothing was changed: resume with the config in {workdir}/config.json, or train "
        "this one in another --workdir")


def not_resumable(config, workdir: str, error) -> RestoreError:
  """The one-line refusal of a training run whose model does not fit W's checkpoint (a CheckpointMismatchError)."""
  try:
    changed = config_differences(load_config(workdir), config)
    fields = f"it differs from {workdir}/config.json in {'; '.join(changed) or 'no field'}"
  except RestoreError:
    fields = f"{workdir}/config.json is unreadable"
  return RestoreError(
      f"{workdir}: this config cannot continue the run there: {fields}; its model does not fit the checkpoint "
      f"{error.path} ({error.summary}); nothing was changed, config.json included: resume with the config in "
      f"{workdir}/config.json, or train this config in another --workdir")


def _fill_defaults(config, defaults) -> None:
  import ml_collections
  for key in defaults:
    if key not in config:
      config[key] = defaults[key]
    elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(defaults[key], ml_collections.ConfigDict):
      _fill_defaults(config[key], defaults[key])


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def tensorboard_dir(workdir: str) -> str:
  return os.path.join(workdir, "tensorboard")


def eval_dir(workdir: str, name: str, step: int, retrieval: str = "exhaustive") -> str:
  """`W/eval/<name>_step<step>[_two_stage]`: name is a split ("val", "test_public") or "periodic"."""
  suffix = "" if retrieval == "exhaustive" else f"_{retrieval}"
  return files.join(workdir, "eval", f"{name}_step{step}{suffix}")


def demo_data_dir(workdir: str) -> str:
  """Where the demo's synthetic corpus is prepared (`data_prep.demo_corpus`)."""
  return os.path.join(workdir, "data")


def open_data(config, workdir: str) -> prepared_data.PreparedData:
  """The run's prepared data: `config.data.prepared_dir`, or the demo corpus under `W/data`.

  Never builds anything: only the demo's own first run (`hammer_jax.main`) prepares
  its corpus, so a later command says what is missing instead of rebuilding it.
  """
  if config.data.source == "synthetic" and not config.data.prepared_dir:
    path = os.path.join(demo_data_dir(workdir), "prepared")
    if not files.exists(os.path.join(path, "prepared.json")):
      raise prepared_data.PreparedDataError(
          f"{path}: the demo corpus of this workdir is missing or incomplete; the demo's training run builds it: "
          f"python -m hammer_jax.main --config=configs/demo.py --workdir={workdir}")
    return prepared_data.open_prepared(path)
  return prepared_data.open_prepared(config.data.prepared_dir)


def restore(workdir: str, step: int | None = None) -> tuple[Any, prepared_data.PreparedData, hammer.Hammer, Any, int]:
  """Returns (config, data, model, {"params": params} on this host, step) of W's latest (or `step`) checkpoint."""
  from hammer_jax.retrieval.scorer import local_params
  from hammer_jax.train import checkpointing, optimizer, state as train_state
  config = load_config(workdir)
  ckpt_dir = checkpoint_dir(workdir)
  ckpt = checkpointing.Checkpointer(ckpt_dir) if files.isdir(ckpt_dir) else None
  try:  # Closed on every path: an open Orbax checkpointer's threads break the interpreter's exit.
    steps = ckpt.all_steps() if ckpt else []
    if not steps:
      raise RestoreError(f"{workdir}: no checkpoint; train first: python -m hammer_jax.main --workdir={workdir} "
                         f"--config=<config>")
    if step is not None and step not in steps:
      raise RestoreError(f"{workdir}: no checkpoint at step {step} (available: {steps})")
    data = open_data(config, workdir)
    model = build.create_model(config, data.video_dim, data.subtitle_dim)
    mesh = train_state.create_mesh()
    _, abstract, _ = train_state.abstract_train_state(model, config, optimizer.make_optimizer(config.optim),
                                                      data.video_dim, data.subtitle_dim, mesh)
    try:
      state = ckpt.restore(abstract, step)
    except checkpointing.CheckpointMismatchError as e:
      raise RestoreError(f"{e.path}: the checkpoint does not fit the model built from {workdir}/config.json and the "
                         f"data in {data.path} ({e.summary}); evaluate with the data and code it was trained with"
                         ) from None
  finally:
    if ckpt is not None:
      ckpt.close()
  return config, data, model, {"params": local_params(state.params)}, int(state.step)
