"""Orbax checkpoints of the train state, and preemption (SIGTERM) handling.

Orbax writes each checkpoint into a temporary folder and renames it only when
complete, so a run killed mid-save (even `kill -9`) leaves no half-written
checkpoint that a restart could take for a good one; restarts restore the latest
finished step. The input pipeline is a function of the step (see
`input_pipeline.TrainBatches`), so the step is the whole data state.

Restoring needs an abstract target carrying shardings (`jax.eval_shape` of the
sharded init), which also lets a checkpoint be restored onto another topology.
Inference restores the parameters only (`restore_params`, Orbax's partial
restore), never the optimizer state.
A restore that fails says why in one line: a checkpoint of another model
(`CheckpointMismatchError`, the arrays whose names or shapes differ, read from
the checkpoint's metadata) or a damaged one (`DamagedCheckpointError`, naming
the newest step that still restores).
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from hammer_jax import files
from hammer_jax.errors import HammerError


class CheckpointMismatchError(HammerError, ValueError):
  """The checkpoint holds another model's arrays; `differences` lists them ("name: checkpoint ..., model ...")."""

  def __init__(self, path: str, differences: list[str]):
    self.path, self.differences = path, differences
    more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
    self.summary = "; ".join(differences[:3]) + more
    super().__init__(f"{path}: the checkpoint holds another model ({self.summary})")


class DamagedCheckpointError(HammerError):
  """A checkpoint whose files cannot be read back (truncated, partly deleted); names the newest intact step."""

  def __init__(self, path: str, step: int, intact: int | None, cause: str):
    self.path, self.step, self.intact = path, step, intact
    if intact is None:
      what = "no earlier step restores either: train again in another --workdir"
    else:
      what = (f"the newest intact step is {intact}: pass --step={intact} to evaluate, search or index it; to resume "
              f"training from it, move {path} out of the checkpoints folder")
    super().__init__(f"{path}: damaged checkpoint of step {step}, cannot be read back ({cause}); {what}")


def has_checkpoints(directory: str) -> bool:
  """Whether `directory` holds a finished checkpoint (a `<step>` folder; unfinished ones carry a suffix)."""
  return files.isdir(directory) and any(name.isdigit() for name in files.listdir(directory))


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
    saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_savable(state))),
                              force=True)
    if saved:
      logging.info("Saving checkpoint at step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The whole train state of `step` (default: latest), onto `abstract_state`'s shapes, dtypes and shardings.

    Raises CheckpointMismatchError or DamagedCheckpointError (one line each)
    when the checkpoint cannot be restored onto it.
    """
    return self._restore_or_explain(abstract_state, step, partial=False)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step) of `step` (default: latest) without the optimizer state, which is never read.

    Inference needs the parameters only: reading Adam's two moments too would
    take three times their memory on the accelerator. `abstract_params` carries
    the shardings to restore onto (`state.abstract_params`). Raises like `restore`.
    """
    sharding = jax.tree_util.tree_leaves(abstract_params)[0].sharding
    target = {"step": jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=sharding), "params": abstract_params}
    restored = self._restore_or_explain(target, step, partial=True)
    return restored["params"], int(restored["step"])

  def _restore_or_explain(self, target: Any, step: int | None, *, partial: bool) -> Any:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    # Compare from the metadata first: Orbax's partial restore skips the rest without a word, and a full restore
    # that fails on a shape leaves TensorStore reads whose callbacks print tracebacks after the error line.
    differences = self.differences(target, step, partial=partial)
    if differences:
      raise CheckpointMismatchError(self.step_path(step), differences)
    try:
      return self._restore(target, step, partial=partial)
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises bare Exceptions; classified next.
      raise self._explain(target, step, e, partial=partial) from None

  def _restore(self, target: Any, step: int, *, partial: bool = False) -> Any:
    if partial:
      # Orbax's partial restore: the checkpoint's leaves that `target` lacks are not read. Through a reader of its
      # own: the manager keeps the handler of its first restore or save of "state" (a StandardCheckpointHandler).
      args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True)
      with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(files.native(files.join(self.step_path(step), "state")), args=args)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

  def step_path(self, step: int) -> str:
    return files.join(self.directory, str(step))

  def differences(self, abstract_state: Any, step: int, *, partial: bool = False) -> list[str] | None:
    """What differs between the checkpoint's arrays and `abstract_state`'s (names, shapes, dtypes); None if unreadable.

    With `partial`, the optimizer state only in the checkpoint (left out by a params-only restore) is no
    difference; any other array only in the checkpoint is (Orbax's partial restore would skip it silently).
    """
    try:
      with _quiet_orbax(), ocp.StandardCheckpointer() as reader:
        stored = reader.metadata(files.native(files.join(self.step_path(step), "state"))).item_metadata
    except Exception:  # pylint: disable=broad-except  # Unreadable metadata: a damaged checkpoint.
      return None
    if stored is None:
      return None
    have, want = _leaf_shapes(stored), _leaf_shapes(abstract_state)
    out = [f"{k}: checkpoint {have[k]}, model {want[k]}" for k in want if k in have and have[k] != want[k]]
    out += [f"{k}: only in the model" for k in want if k not in have]
    out += [f"{k}: only in the checkpoint" for k in have
            if k not in want and not (partial and k.startswith("opt_state/"))]
    return out

  def _explain(self, abstract_state: Any, step: int, error: Exception, *, partial: bool) -> HammerError:
    differences = self.differences(abstract_state, step, partial=partial)
    if differences:
      return CheckpointMismatchError(self.step_path(step), differences)
    intact = None
    for earlier in sorted((s for s in self.all_steps() if s < step), reverse=True):
      try:
        with _quiet_orbax():
          self._restore(abstract_state, earlier, partial=partial)
        intact = earlier
        break
      except Exception:  # pylint: disable=broad-except  # Damaged too (or another model): look further back.
        continue
    return DamagedCheckpointError(self.step_path(step), step, intact, _first_line(error))

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


def _savable(state: Any) -> Any:
  """`state` as Orbax saves it fastest: a host copy when every leaf is replicated on every device.

  Orbax writes a jax.Array shard by shard, with per-shard bookkeeping even for
  the replicas it skips: the tiny model's 906 replicated leaves on 8 devices
  took 3.2 s a save, their host copy 0.6 s (benchmarks/checkpoint_save_benchmark.py,
  BENCHMARKS.md). The files are the same zarr arrays, and `restore` puts them
  back onto the abstract target's shardings either way. Orbax writes replicated
  host arrays from process 0 only, as it writes replicated jax.Arrays; a state
  with any sharded leaf stays jax.Arrays, written by the processes owning each shard.
  """
  if all(getattr(x, "is_fully_replicated", False) for x in jax.tree_util.tree_leaves(state)):
    return jax.device_get(state)
  return state


def _leaf_shapes(tree: Any) -> dict[str, str]:
  """{"params/.../kernel": "float32[384, 384]"} of a state or of a checkpoint's metadata (the same names)."""
  def name(key):
    return str(next((getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)), key))

  return {"/".join(name(k) for k in path): f"{getattr(leaf, 'dtype', '?')}{list(getattr(leaf, 'shape', ()))}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _first_line(error: BaseException) -> str:
  """The innermost cause's first line, shortened: TensorStore puts the useful part there."""
  while error.__cause__ is not None:
    error = error.__cause__
  line = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
  return line if len(line) <= 240 else line[:237] + "..."


@contextlib.contextmanager
def _quiet_orbax():
  """While probing a checkpoint that already failed: Orbax's own warnings would only repeat it, over many lines."""
  logger = std_logging.getLogger("absl")
  level = logger.level
  logger.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)
