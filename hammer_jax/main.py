r"""HAMMER main job: trains (and periodically evaluates) a config in a workdir.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo
  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared --config.optim.lr=1e-4

With the demo config (the embedded default) the synthetic corpus is generated and
converted to TFRecord shards under `<workdir>/data` on the first run and reused
afterwards. Re-running with the same workdir resumes from the latest checkpoint.
On a multi-host cluster (Cloud TPU VM slice) every host runs the same command;
`jax.distributed.initialize()` is called when the environment says so (see
docs/running.md).
"""

from __future__ import annotations

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
  import jax
  if FLAGS.coordinator_address:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or FLAGS.coordinator_address.startswith("127.0.0.1"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()  # Cloud TPU VM slices (and SLURM etc.) are auto-detected.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hammer_jax import logs
  logs.quiet_library_logs()
  initialize_distributed()
  from hammer_jax import prepared_data, pretrained, train
  try:
    final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (prepared_data.PreparedDataError, pretrained.CheckpointError, train.NonFiniteLossError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  logging.info("Done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})
  if FLAGS.config.eval.final_eval and final["step"] == FLAGS.config.optim.num_steps:  # not after preemption
    final_evaluation(FLAGS.workdir)


def final_evaluation(workdir: str) -> None:
  """Evaluates the last checkpoint on the eval split and prints the demo's summary."""
  import jax
  from hammer_jax import demo_report, evaluation, restore
  from hammer_jax.evaluator import Evaluator
  config, data, model, params, step = restore.restore(workdir)
  split = config.data.eval_split
  out_dir = os.path.join(workdir, "eval", f"{split}_step{step}")
  results = evaluation.evaluate_split(Evaluator(model, config, data, split), params,
                                      top_k=config.eval.top_k_videos, out_dir=out_dir, with_analyses=True)
  if jax.process_index() == 0 and results:
    print(f"\nHAMMER after {step} steps, {split} split of {data.path}:\n")
    print(demo_report.summary_table(results, demo_report.chance_levels(workdir, split)))
    print()
    print(demo_report.where_things_are(workdir, out_dir))


if __name__ == "__main__":
  app.run(main)
