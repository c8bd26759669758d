"""Loading a trained model from a workdir: its config, its data, its latest (or a given) checkpoint.

Used by the eval binary and search. Every failure is one line that says what to
run: no workdir config, no checkpoint, a checkpoint that does not fit the model
built from the config and the data.
"""

from __future__ import annotations

import os
from typing import Any

from hammer_jax import checkpointing, hammer, optimizer, prepared_data, train
from hammer_jax import train_state as ts


class RestoreError(RuntimeError):
  """The workdir cannot give a trained model (one line, with what to run)."""


def restore(workdir: str, step: int | None = None) -> tuple[Any, prepared_data.PreparedData, hammer.Hammer, Any, int]:
  """Returns (config, data, model, {"params": params} replicated on this host's devices, step)."""
  try:
    config = ts.load_config(workdir)
  except FileNotFoundError as e:
    raise RestoreError(f"{e}") from None
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpointing.Checkpointer(ckpt_dir) if os.path.isdir(ckpt_dir) else None
  steps = ckpt.all_steps() if ckpt else []
  if not steps:
    raise RestoreError(f"{workdir}: no checkpoint; train first: python -m hammer_jax.main --workdir={workdir} "
                       f"--config=<config>")
  if step is not None and step not in steps:
    raise RestoreError(f"{workdir}: no checkpoint at step {step} (available: {steps})")
  data = train.open_data(config, workdir, verbose=False)  # built (and reported) by training
  model = hammer.create_model(config, data.video_dim, data.subtitle_dim)
  mesh = ts.create_mesh()
  _, abstract, _ = ts.abstract_train_state(model, config, optimizer.make_optimizer(config.optim), data.video_dim,
                                           data.subtitle_dim, mesh)
  try:
    state = ckpt.restore(abstract, step)
  except ValueError as e:
    first = str(e).strip().splitlines()[0]
    raise RestoreError(f"{ckpt_dir}: the checkpoint does not fit the model built from {workdir}/config.json and "
                       f"the data in {data.path} ({first}); evaluate with the data and code it was trained with"
                       ) from None
  finally:
    ckpt.close()
  from hammer_jax.evaluator import local_params
  return config, data, model, {"params": local_params(state.params)}, int(state.step)
