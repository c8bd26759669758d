r"""HAMMER main job: trains (and evaluates) a config in a workdir.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo
  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared --config.optim.lr=1e-4

With the demo config (the embedded default) the synthetic corpus is generated and
converted to TFRecord shards under `<workdir>/data` on the first run and reused
afterwards. Re-running with the same workdir resumes from the latest checkpoint.
On a multi-host cluster every host runs the same command (docs/running.md).
"""

from __future__ import annotations

import gc
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file (get_config(arg)), e.g. configs/tvr.py:flat.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for data (demo), checkpoints, logs and results.", required=True)
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-process job outside Cloud TPU.")
flags.DEFINE_integer("num_processes", 1, "Processes in the job (with --coordinator_address).")
flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")


def initialize_distributed() -> None:
  """Starts jax.distributed when the job spans several processes."""
  import os
  import jax
  if FLAGS.coordinator_address:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or FLAGS.coordinator_address.startswith("127.0.0.1"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def prepare_demo_corpus(config, workdir: str) -> None:
  """The demo's corpus: built on its first run (`data_prep.demo_corpus`), found complete afterwards."""
  import jax
  from data_prep import demo_corpus
  from hammer_jax import workdir as workdirs
  from hammer_jax.model import pretrained
  demo_corpus.ensure_synthetic_prepared(
      workdirs.demo_data_dir(workdir), synthetic=dict(config.data.synthetic),
      text_checkpoint=config.model.text_checkpoint or pretrained.DEFAULT_CHECKPOINT,
      verbose=jax.process_index() == 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hammer_jax import logs
  logs.quiet_library_logs()
  initialize_distributed()
  from data_prep.records import DataError
  from hammer_jax.data import prepared_data
  from hammer_jax.model import pretrained
  from hammer_jax.train import loop
  config = FLAGS.config
  try:
    if config.data.source == "synthetic" and not config.data.prepared_dir:
      prepare_demo_corpus(config, FLAGS.workdir)
    state = loop.train_and_evaluate(config, FLAGS.workdir)
  except (prepared_data.PreparedDataError, pretrained.CheckpointError, loop.NonFiniteLossError, DataError) as e:
    gc.disable()  # From here on no garbage collection may start the input pipeline's teardown (below).
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    exit_without_teardown(1)
  gc.disable()
  logging.info("Done: step %d of %d", int(state.step), config.optim.num_steps)
  exit_without_teardown(0)


def exit_without_teardown(code: int) -> None:
  """Ends the process once the run's results are durable, skipping the interpreter's teardown.

  Called only after `loop.train_and_evaluate` has returned or raised, i.e. after
  its `finally` waited for the last checkpoint to be committed (Orbax renames it
  into place only when complete) and closed the TensorBoard writer. What is left
  to do here is to flush the console and log files and, on a multi-process job,
  leave the JAX coordination service together with the other processes (what
  JAX's own atexit hook would do).

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
  import jax
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  jax.effects_barrier()  # As JAX's atexit hooks: pending effects (jax.debug callbacks) finish,
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()  # and the processes leave the coordination service together (a barrier).
  std_logging.shutdown()  # Flushes and closes every handler (absl's log file included), as atexit would.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  app.run(main)
