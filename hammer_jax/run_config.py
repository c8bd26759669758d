"""A run's `W/config.json` and the prepared data it names.

`config.json` is written only once the run it describes can continue the
workdir's checkpoints (`train/resume.py` checks first, then the training loop's
restore), so a run with an incompatible config changes nothing. Readers get the
saved config with the fields added to configs/base.py since then at their
defaults; every failure is one line that says what to run.
"""

from __future__ import annotations

import json

from hammer_jax import files
from hammer_jax import workdir as layout
from hammer_jax.data import prepared_data
from hammer_jax.errors import HammerError


class RestoreError(HammerError, RuntimeError):
  """The workdir cannot give a trained model, or cannot be continued (one line, with what to run)."""


def save_config(config, workdir: str) -> str:
  """Writes the resolved config to `W/config.json` (atomically; process 0)."""
  import jax
  path = layout.config_path(workdir)
  if jax.process_index() == 0:
    files.atomic_write(path, config.to_json_best_effort(indent=1, sort_keys=True))
  return path


def load_config(workdir: str):
  """The config `W` was trained with; fields added to configs/base.py since then get their defaults."""
  path = layout.config_path(workdir)
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
  return with_defaults(saved)


def with_defaults(saved: dict):
  """A ConfigDict of a config's JSON, with the fields it lacks from configs/base.py."""
  import ml_collections
  from configs import base
  config = ml_collections.ConfigDict(saved)
  _fill_defaults(config, base.get_base_config())
  return config


def _fill_defaults(config, defaults) -> None:
  import ml_collections
  for key in defaults:
    if key not in config:
      config[key] = defaults[key]
    elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(defaults[key], ml_collections.ConfigDict):
      _fill_defaults(config[key], defaults[key])


def uses_demo_corpus(config) -> bool:
  """Whether the run reads the demo's synthetic corpus under `W/data` (no prepared_dir of its own)."""
  return config.data.source == "synthetic" and not config.data.prepared_dir


def open_data(config, workdir: str) -> prepared_data.PreparedData:
  """The run's prepared data: `config.data.prepared_dir`, or the demo corpus under `W/data`.

  Never builds anything: only the demo's own first run (`hammer_jax.main`) prepares
  its corpus, so a later command says what is missing instead of rebuilding it.
  """
  if uses_demo_corpus(config):
    path = layout.demo_prepared_dir(workdir)
    if not files.exists(files.join(path, "prepared.json")):
      raise prepared_data.PreparedDataError(
          f"{path}: the demo corpus of this workdir is missing or incomplete; the demo's training run builds it: "
          f"python -m hammer_jax.main --config=configs/demo.py --workdir={workdir}")
    return prepared_data.open_prepared(path)
  return prepared_data.open_prepared(config.data.prepared_dir)
