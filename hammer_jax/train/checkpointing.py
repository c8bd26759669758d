"""Orbax checkpoints of the train state, and preemption (SIGTERM) handling.

Orbax writes each checkpoint into a temporary folder and renames it only when
complete, so a run killed mid-save (even `kill -9`) leaves no half-written
checkpoint that a restart could take for a good one; restarts restore the latest
finished step. The input pipeline is a function of the step (see
`input_pipeline.TrainBatches`), so the step is the whole data state.

Restoring needs an abstract target carrying shardings (`jax.eval_shape` of the
sharded init), which also lets a checkpoint be restored onto another topology.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from hammer_jax import files


class Checkpointer:
  """Periodic saves with `max_to_keep`, restore of the latest (or a given) step."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every_steps: int = 1000):
    self.directory = files.absolute(directory)
    self.save_every_steps = save_every_steps
    self.manager = ocp.CheckpointManager(
        files.native(self.directory),  # What Orbax (epath + tensorstore) opens: a local path or gs://.
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state",))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves when `step` is on the save interval, or always with `force`."""
    if not force and (step % self.save_every_steps or step in self.manager.all_steps()):
      return False
    if step in self.manager.all_steps():
      return False
    saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    if saved:
      logging.info("Saving checkpoint at step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores onto `abstract_state`'s shapes, dtypes and shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionWatcher:
  """Says when to save and stop because the job is being preempted (SIGTERM).

  One process: our own SIGTERM handler sets a flag, checked at step boundaries.
  Several processes: JAX's preemption sync point (installed by
  `jax.distributed.initialize`, which listens for SIGTERM) makes every host stop
  at the same step, so their checkpoint is consistent.
  """

  def __init__(self):
    self.requested = False
    self._multi = jax.process_count() > 1
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if not self._multi:
      signal.signal(signal.SIGTERM, self._previous)
