"""Starting and ending a binary: the JAX distributed runtime when the job spans processes, a prompt exit.

Every binary (train, eval, search, index, app) calls `start()` first, before
anything touches a JAX device. Which job it is part of is decided, in order:

  1. `--coordinator_address=host:port --num_processes=N --process_id=I` given:
     those (a cluster JAX cannot detect; on CPU-only machines the collectives
     go through gloo);
  2. a cluster JAX's own auto-detection recognises (`jax.distributed.initialize()`
     without arguments: a Cloud TPU VM slice from its metadata server, GKE,
     SLURM, Open MPI; jax._src.clusters): the runtime starts with what it found;
  3. neither: one process, no runtime.

Each process then logs one line: which of these it is, its index, the process
count and its local and global devices. `finish(code)` ends a binary without
the interpreter's teardown, once its results are durable (see there why). Without the runtime JAX's preemption
notice (`multihost_utils.reached_preemption_sync_point`) never fires, which is
why every binary starts here.

`run(main)` is the `__main__` of every binary (train, eval, index, search, app):
a bad flag, and any anticipated failure (`errors.HammerError`) raised by `main`,
ends it with one `error:` line on stderr and exit status 1.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Callable

from absl import flags, logging

from hammer_jax import distributed
from hammer_jax.errors import HammerError, UsageError

flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-process job outside the "
                    "clusters JAX detects itself (Cloud TPU, GKE, SLURM, Open MPI).")
flags.DEFINE_integer("num_processes", 1, "Processes in the job (with --coordinator_address).")
flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")


def start() -> str:
  """Quiet library logs, then `initialize_distributed` from the flags; returns how it started."""
  from hammer_jax import logs
  logs.quiet_library_logs()
  f = flags.FLAGS
  return distributed.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)


# Error classes of modules that do not derive theirs from HammerError yet (one list, here only).
_ANTICIPATED_ELSEWHERE = (("hammer_jax.data.prepared_data", "PreparedDataError"),
                          ("hammer_jax.data.shards", "ShardError"),
                          ("hammer_jax.model.pretrained", "CheckpointError"),
                          ("data_prep.records", "DataError"))


def anticipated() -> tuple[type[BaseException], ...]:
  """The exception classes a binary reports as one line: HammerError and `_ANTICIPATED_ELSEWHERE`.

  Looked up in `sys.modules`: a class whose module was never imported cannot
  have been raised, and importing it here would load TensorFlow on a flag error.
  """
  found = [getattr(sys.modules[module], name) for module, name in _ANTICIPATED_ELSEWHERE if module in sys.modules]
  return (HammerError, *found)


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None] | None = None) -> None:
  """A binary's `__main__`: its flags, then `main(argv)` under absl; what goes wrong as anticipated is one line.

  Flag errors (an unknown flag, a value out of its bounds, a mistyped config
  override) and every `anticipated()` exception end the process through `fail`
  (status 1); Ctrl-C through `fail` with status 130. A failure nobody
  anticipated keeps its traceback: that is a bug to report.
  """
  from absl import app
  if define_flags is not None:
    define_flags()

  def body(argv):
    try:
      if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])} (flags are written --name=value)")
      main(argv)
    except KeyboardInterrupt:
      fail("interrupted (Ctrl-C)", code=130)
    except anticipated() as e:
      fail(str(e))

  app.run(body, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with its two-line FATAL report (or a config override's traceback) made one `error:` line."""
  try:
    return flags.FLAGS(argv)
  # ml_collections' config flags raise these for a --config.<field> that does not exist or does not take the
  # value, and a config file's get_config its ValueError for an unknown variant.
  except (flags.Error, HammerError, AttributeError, KeyError, TypeError, ValueError) as e:
    program = os.path.basename(argv[0]) if argv else "the binary"
    fail(f"{_flag_error(e)} (--helpshort lists the flags of {program})")
    raise  # Not reached: `fail` ends the process.


def _flag_error(error: Exception) -> str:
  """The message of a flag error, without the traceback a config file's error carries inside it."""
  if isinstance(error, (flags.Error, HammerError)):
    lines = str(error).strip().splitlines()
    # config_flags puts the whole traceback of a failing get_config into the message: its first and last lines say it.
    return f"{lines[0]} {lines[-1]}" if any(l.startswith("Traceback") for l in lines) else " ".join(lines)
  while error.args and isinstance(error.args[0], BaseException):  # ml_collections wraps a KeyError in AttributeError
    error = error.args[0]
  return "bad flag value: " + str(error.args[0] if error.args else error)


def fail(message: str, code: int = 1) -> None:
  """A binary's one-line error: `error: message` on stderr, exit status `code`, via `finish`.

  (Not `sys.exit`: the interpreter's teardown can then print a thread's
  traceback, e.g. a library's executor refusing work during shutdown, after
  the one line.)
  """
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  finish(code)


def finish(code: int = 0) -> None:
  """Ends the process once the run's results are durable, skipping the interpreter's teardown.

  A binary calls it as its last step, once its results are durable (training:
  after `loop.train_and_evaluate` returned or raised, i.e. after its `finally`
  waited for the last checkpoint to be committed, which Orbax renames into place
  only when complete, and closed the TensorBoard writer). What is left to do is
  to flush the console and log files and, on a multi-process job, leave the JAX
  coordination service together with the other processes (what JAX's own atexit
  hook would do).

  The teardown that `os._exit` skips has nothing left to save, but can hold the
  exit for up to a minute: it destroys the training tf.data iterator
  (`input_pipeline.TrainBatches` sits in a reference cycle, so in practice the
  interpreter's final garbage collection frees it), and TensorFlow's iterator
  destructor joins the tf.data autotuning thread, which misses its wake-up when
  it runs between `CancellationManager::StartCancel`'s callbacks and the store of
  `is_cancelled_`, and then sleeps out the rest of its optimisation period
  (doubling up to 60 s). A preempted Cloud TPU VM has about 30 s. `gc.disable()`
  before the call keeps a collection from starting that destructor on the way.
  """
  import logging as std_logging
  gc.disable()  # From here on no garbage collection may start an input pipeline's teardown (below).
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  if "jax" in sys.modules:  # A flag error ends the process before JAX was ever imported: nothing to wait for.
    import jax
    jax.effects_barrier()  # As JAX's atexit hooks: pending effects (jax.debug callbacks) finish,
    if jax.distributed.is_initialized():
      jax.distributed.shutdown()  # and the processes leave the coordination service together (a barrier).
  std_logging.shutdown()  # Flushes and closes every handler (absl's log file included), as atexit would.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
