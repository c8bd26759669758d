"""Whether a training run may continue a workdir's checkpoints, decided before anything is written.

`check_resumable` refuses a run that would rebuild the demo corpus the
checkpoints were trained on; `not_resumable` words the refusal of a run whose
model does not fit the checkpoint (found by the training loop's restore). Both
name the config fields that differ from `W/config.json`.
"""

from __future__ import annotations

import json

from hammer_jax import files
from hammer_jax import workdir as layout
from hammer_jax.run_config import RestoreError, load_config, uses_demo_corpus, with_defaults
from hammer_jax.train import checkpointing


def config_differences(saved, config) -> list[str]:
  """"field: saved -> new" for each field whose value differs (as config.json writes them, defaults filled)."""
  def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
      out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out

  old, new = (flat(json.loads(with_defaults(json.loads(c.to_json_best_effort())).to_json())) for c in (saved, config))
  return [f"{k}: {old.get(k, '(none)')} -> {new.get(k, '(none)')}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def check_resumable(config, workdir: str) -> None:
  """Refuses, before anything is written, a run that would replace the demo corpus W's checkpoints were trained on.

  The demo builds its corpus under `W/data` from `data.synthetic` and the text
  checkpoint's tokenizer; a run with others would rebuild it in place. Every
  other incompatibility shows when the training loop restores the checkpoint,
  which it does before it writes config.json.
  """
  if not uses_demo_corpus(config) or not files.exists(layout.config_path(workdir)):
    return
  try:
    saved = load_config(workdir)
  except RestoreError:
    return  # Nothing to compare with; the restore decides.
  if not uses_demo_corpus(saved) or not checkpointing.has_checkpoints(layout.checkpoint_dir(workdir)):
    return
  corpus_fields = ("data.synthetic", "model.text_checkpoint")
  changed = [d for d in config_differences(saved, config) if d.startswith(corpus_fields)]
  if changed:
    raise RestoreError(
        f"{layout.demo_data_dir(workdir)}: the demo corpus this workdir's checkpoints were trained on would be "
        f"rebuilt ({'; '.join(changed)}); nothing was changed: resume with the config in {workdir}/config.json, or "
        "train this one in another --workdir")


def not_resumable(config, workdir: str, error: checkpointing.CheckpointMismatchError) -> RestoreError:
  """The one-line refusal of a training run whose model does not fit W's checkpoint."""
  try:
    changed = config_differences(load_config(workdir), config)
    fields = f"it differs from {workdir}/config.json in {'; '.join(changed) or 'no field'}"
  except RestoreError:
    fields = f"{workdir}/config.json is unreadable"
  return RestoreError(
      f"{workdir}: this config cannot continue the run there: {fields}; its model does not fit the checkpoint "
      f"{error.path} ({error.summary}); nothing was changed, config.json included: resume with the config in "
      f"{workdir}/config.json, or train this config in another --workdir")
