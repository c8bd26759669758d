r"""Eval binary: corpus retrieval + localisation of a trained workdir on a split.

  python -m hammer_jax.eval --workdir=W [--split=val|test|SPLIT] [--step=N] [--top_k=100]
      [--retrieval=exhaustive|two_stage] [--candidates=K] [--saved_index=true|false]

Restores the workdir's config and the parameters of its latest (or `--step`) checkpoint and evaluates a
split of its prepared data (local or `gs://`): `val` is the config's eval split, `test` TVR's
test_public, and any other prepared split by name (ActivityNet's `val_2`). It
writes `W/eval/<split>_step<N>/` (`retrieval/evaluator.py`: predictions.json in
the TVR submission layout, metrics.json/.md, Figures 2-3 and 5) and TensorBoard
scalars under W/tensorboard. `--retrieval=two_stage` (a model with the
dual-encoder head) re-scores only the first stage's top K videos and writes
`W/eval/<split>_step<N>_two_stage/`; when `python -m hammer_jax.index` has
built a current first-stage index and parts store for that split and step, it
evaluates with them (the corpus is not encoded again, and the re-rank reads
only each query's K candidates from the store; `--saved_index=false` encodes
anyway). A split without ground truth (test_public) yields
predictions.json only. On several hosts every process runs the same command
(with the same start-up flags as training, `hammer_jax/startup.py`); each
scores its share of the queries and process 0 writes the files.
"""

from __future__ import annotations


from absl import flags, logging

from hammer_jax import startup

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
flags.DEFINE_string("split", "val", "val: the config's eval split; test: test_public; or a prepared split's name.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
flags.DEFINE_integer("top_k", None, "Videos kept per query for localisation (default: config.eval.top_k_videos).",
                     lower_bound=1)
flags.DEFINE_integer("max_queries", None, "Evaluate only the first N queries (quick checks).", lower_bound=1)
flags.DEFINE_enum("retrieval", None, ["exhaustive", "two_stage"],
                  "exhaustive: HAMMER scores every video (the paper); two_stage: the first stage's top K only "
                  "(default: config.eval.retrieval).")
flags.DEFINE_integer("candidates", None, "Two-stage K (default: config.eval.first_stage_candidates).",
                     lower_bound=1)
flags.DEFINE_bool("saved_index", True, "Two-stage: use the first-stage index and parts store of "
                  "python -m hammer_jax.index when they are current for this split and step.")


def split_name(config, split: str) -> str:
  return {"val": config.data.eval_split, "test": "test_public"}.get(split, split)


def main(argv):
  del argv
  startup.start()
  import jax
  from hammer_jax import restore
  from hammer_jax import workdir as workdirs
  from hammer_jax.retrieval import evaluator, metrics
  from hammer_jax.retrieval.scorer import PairScorer
  from hammer_jax.train import loop
  config, data, model, params, step = restore.restore(FLAGS.workdir, FLAGS.step)
  split = split_name(config, FLAGS.split)
  data.split(split)
  top_k = FLAGS.top_k if FLAGS.top_k is not None else config.eval.top_k_videos
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding, progress=True)
  saved = None
  if (FLAGS.retrieval or config.eval.retrieval) == "two_stage" and FLAGS.saved_index:
    saved = evaluator.saved_two_stage(FLAGS.workdir, config, data, split, step, params)
  ev = evaluator.Evaluator(scorer, config, data, split, top_k=top_k, max_queries=FLAGS.max_queries,
                           analyses=True, retrieval=FLAGS.retrieval, candidates=FLAGS.candidates, saved=saved)
  out_dir = workdirs.eval_dir(FLAGS.workdir, split, step, ev.retrieval)
  how = ev.retrieval if ev.retrieval == "exhaustive" else f"two-stage, {ev.candidates} candidates"
  logging.info("Evaluating %s (step %d) on %s/%s, top %d videos (%s)", FLAGS.workdir, step, data.path, split,
               top_k, how)
  values = dict(ev.run(params, out_dir=out_dir))
  if values and jax.process_index() == 0:
    writer = loop.summary_writer(FLAGS.workdir)
    tag = f"eval_{split}" + ("" if ev.retrieval == "exhaustive" else f"_{ev.retrieval}")
    writer.write_scalars(step, {f"{tag}/{k}": v for k, v in values.items() if "_by_type/" not in k})
    writer.close()
    print(metrics.format_table(ev.last_results))
  print(f"Wrote {out_dir}")


if __name__ == "__main__":
  startup.run(main)
