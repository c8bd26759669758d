"""A trained workdir restored for inference: its config, data, model and parameters (no optimizer state).

  config, data, model, params, step = restore(W)           # params: {"params": ...} on this host

What evaluation, indexing, search and the app start from. The model is built
from `W/config.json` and `W/text_model/` (`run_text_model.py`), so the BERT
folder the run was trained from is not needed, and only the parameters are read
from the checkpoint (`Checkpointer.restore_params`): Adam's moments would take
twice their memory again. Every failure is one line that says what to run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hammer_jax import files, run_config, run_text_model
from hammer_jax import workdir as layout
from hammer_jax.data import prepared_data
from hammer_jax.model import build, hammer
from hammer_jax.retrieval.scorer import local_params
from hammer_jax.run_config import RestoreError
from hammer_jax.train import checkpointing
from hammer_jax.train import state as ts


class Restored(NamedTuple):
  """A checkpoint of a workdir, ready for inference; params is {"params": tree} in this host's memory."""
  config: Any
  data: prepared_data.PreparedData
  model: hammer.Hammer
  params: dict
  step: int


def restore(workdir: str, step: int | None = None) -> Restored:
  """W's latest (or `step`) checkpoint: the parameters only, onto the model of W's config and text model."""
  config = run_config.load_config(workdir)
  ckpt_dir = layout.checkpoint_dir(workdir)
  ckpt = checkpointing.Checkpointer(ckpt_dir) if files.isdir(ckpt_dir) else None
  try:  # Closed on every path: an open Orbax checkpointer's threads break the interpreter's exit.
    steps = ckpt.all_steps() if ckpt else []
    if not steps:
      raise RestoreError(f"{workdir}: no checkpoint; train first: python -m hammer_jax.main --workdir={workdir} "
                         f"--config=<config>")
    if step is not None and step not in steps:
      raise RestoreError(f"{workdir}: no checkpoint at step {step} (available: {steps})")
    data = run_config.open_data(config, workdir)
    model_config = run_text_model.inference_config(config, workdir)
    model = build.create_model(model_config, data.video_dim, data.subtitle_dim)
    target = ts.abstract_params(model, model_config, data.video_dim, data.subtitle_dim, ts.create_mesh())
    try:
      params, step = ckpt.restore_params(target, step)
    except checkpointing.CheckpointMismatchError as e:
      raise RestoreError(f"{e.path}: the checkpoint does not fit the model built from {workdir}/config.json and the "
                         f"data in {data.path} ({e.summary}); evaluate with the data and code it was trained with"
                         ) from None
  finally:
    if ckpt is not None:
      ckpt.close()
  return Restored(config, data, model, {"params": local_params(params)}, step)
