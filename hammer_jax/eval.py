r"""Eval binary: corpus retrieval + localisation of a trained workdir on a split.

  python -m hammer_jax.eval --workdir=W [--split=val|test] [--step=N] [--top_k=100]

Restores the workdir's config and latest (or `--step`) checkpoint, evaluates the
split of the configured data (`val` = the config's eval split; `test` = TVR's
test_public) and writes into `W/eval/<split>_step<N>/`:
  predictions.json       TVR submission layout (VCMR / SVMR / VR, 100 each)
  metrics.json, .md      VR R@{1,5,10,100} + median rank, SVMR/VCMR R@k at IoU
                         0.5/0.7, TL mIoU and R@1 at IoU 0.3/0.5/0.7, per type
  duration_buckets.*     Figures 2 and 3 (VR median rank, TL mIoU by duration)
  timelines.png          Figure 5 (ground truth vs HAMMER vs frame / clip level)
and TensorBoard scalars under W/tensorboard. A split without ground truth
(test_public) yields predictions.json only. On several hosts every process runs
the same command; each scores its share of the queries.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
flags.DEFINE_enum("split", "val", ["val", "test"], "val: the config's eval split; test: test_public.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("top_k", None, "Videos kept per query for localisation (default: config.eval.top_k_videos).")
flags.DEFINE_integer("max_queries", None, "Evaluate only the first N queries (quick checks).")


def split_name(config, split: str) -> str:
  return config.data.eval_split if split == "val" else "test_public"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hammer_jax import logs
  logs.quiet_library_logs()
  from hammer_jax import evaluation, prepared_data, restore
  from hammer_jax.evaluator import Evaluator
  try:
    config, data, model, params, step = restore.restore(FLAGS.workdir, FLAGS.step)
    split = split_name(config, FLAGS.split)
    data.split(split)
  except (restore.RestoreError, prepared_data.PreparedDataError) as e:
    sys.exit(f"error: {e}")
  out_dir = os.path.join(FLAGS.workdir, "eval", f"{split}_step{step}")
  evaluator = Evaluator(model, config, data, split)
  top_k = FLAGS.top_k or config.eval.top_k_videos
  logging.info("Evaluating %s (step %d) on %s/%s, top %d videos", FLAGS.workdir, step, data.path, split, top_k)
  results = evaluation.evaluate_split(evaluator, params, top_k=top_k, max_queries=FLAGS.max_queries,
                                      out_dir=out_dir, with_analyses=True)
  if results:
    import jax
    from clu import metric_writers
    from hammer_jax import metrics
    if jax.process_index() == 0:
      writer = metric_writers.SummaryWriter(os.path.join(FLAGS.workdir, "tensorboard"))
      writer.write_scalars(step, evaluation.flat_scalars(results, f"eval_{split}"))
      writer.close()
    print(metrics.format_table(results))
  print(f"Wrote {out_dir}")


if __name__ == "__main__":
  app.run(main)
