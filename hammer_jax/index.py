r"""Builds the first-stage index of a corpus: dual-encoder clip vectors in FAISS.

  python -m hammer_jax.index --workdir=W [--prepared_dir=DIR] [--split=S] [--step=N]
      [--kind=auto|flat|ivfpq] [--videos_per_shard=2048]

Encodes every video of the corpus (default: the workdir's eval split; or a
folder prepared with `python -m data_prep.tvr`) with the checkpoint's video
branches and dual-encoder head, and saves a `first_stage.FirstStageIndex` as
`W/index/<corpus-id>_step<N>.npz`, with the vocabulary, checkpoint step and
fingerprints it was built from (index_files.py). `hammer_jax.search` then
answers two-stage from it; a later mismatch is a one-line error there.

Encoding goes shard by shard of `videos_per_shard` videos; each finished shard
is saved (atomically) under `W/index/<corpus-id>_step<N>.parts/`, so a killed
build resumes where it stopped, and on a multi-host job (same start-up flags as
training) process i encodes shards i, i + P, ...; process 0 then builds and
saves the index and removes the shards. A progress line gives videos/s and ETA.
"""

from __future__ import annotations

import json
import sys
import time

from absl import flags, logging

from hammer_jax import distributed, startup
from hammer_jax.errors import HammerError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
flags.DEFINE_string("prepared_dir", None, "A corpus prepared with data_prep.tvr (default: the workdir's data).")
flags.DEFINE_string("split", None, "Corpus split (default: the config's eval split).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
flags.DEFINE_enum("kind", None, ["auto", "flat", "ivfpq"], "FAISS index kind (default: config.eval.first_stage_index).")
flags.DEFINE_integer("videos_per_shard", 2048, "Videos encoded per resumable shard.", lower_bound=1)


def build_index(workdir: str, *, prepared_dir: str | None = None, split: str | None = None, step: int | None = None,
                kind: str | None = None, videos_per_shard: int = 2048, progress: bool = True) -> str:
  """Encodes, indexes and saves; returns the index path (see the module docstring)."""
  import jax
  import numpy as np
  from hammer_jax import files
  from hammer_jax import restore
  from hammer_jax.data import input_pipeline
  from hammer_jax.retrieval import index_files
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  from hammer_jax.retrieval.scorer import PairScorer

  config, model_data, model, params, step = restore.restore(workdir, step)
  if not model.config.dual_encoder_dim:
    raise HammerError(f"{workdir}: the model has no dual-encoder head (trained with loss.use_dual_encoder=False); "
                     "train with the `two_stage` variant, or see docs/two_stage.md to add the head")
  data, split = index_files.open_corpus(config, model_data, prepared_dir, split)
  num_videos = data.split(split)["num_videos"]
  meta = index_files.index_meta(config, data, split, step, params)
  path = index_files.first_stage_path(workdir, data, split, step)
  parts = path[:-len(".npz")] + ".parts"
  # Shards of an earlier build of something else, or of one whose stamp is unreadable, are not reused.
  stamp = files.join(parts, "fingerprint.json")
  if files.exists(stamp) and _stamp(files, stamp).get("fingerprint") != meta["fingerprint"]:
    files.rmtree(parts)
  if jax.process_index() == 0 and not files.exists(stamp):
    files.atomic_write(stamp, json.dumps({"fingerprint": meta["fingerprint"], "videos_per_shard": videos_per_shard}))
  distributed.barrier("index_parts_ready")
  videos_per_shard = json.loads(files.read_text(stamp))["videos_per_shard"]  # a resumed build keeps its shards
  num_shards = max(1, -(-num_videos // videos_per_shard))
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding)
  spec = input_pipeline.PipelineSpec.from_config(config.data)
  mine = [s for s in range(num_shards) if s % jax.process_count() == jax.process_index()]
  todo = [s for s in mine if not files.exists(files.join(parts, f"shard-{s:05d}.npz"))]
  shard_range = lambda s: input_pipeline.process_range(num_videos, s, num_shards)
  total = sum(shard_range(s)[1] - shard_range(s)[0] for s in todo)
  done, t0 = 0, time.time()
  if len(todo) < len(mine):
    logging.info("index: resuming, %d of this process's %d shards already encoded", len(mine) - len(todo), len(mine))
  for s in todo:
    start, end = shard_range(s)
    batches = input_pipeline.eval_video_batches(data, split, spec, scorer.batch_size, process_index=s,
                                                process_count=num_shards)
    pieces = list(scorer.embed_video_batches(params, batches))
    vectors = np.concatenate([v for _, v, _ in pieces])
    mask = np.concatenate([m for _, _, m in pieces])
    video_index = np.concatenate([b["video_index"][b["example_mask"] > 0] for b, _, _ in pieces])
    files.atomic_write_npz(files.join(parts, f"shard-{s:05d}.npz"),
                           dict(vectors=vectors, mask=mask, video_index=video_index))
    done += end - start
    if progress:
      rate = done / max(time.time() - t0, 1e-9)
      print(f"\r  index: encoded {done}/{total} videos  {rate:.1f} videos/s  ETA {(total - done) / rate:.0f}s",
            end="" if done < total else "\n", file=sys.stderr, flush=True)
  distributed.barrier("index_shards_done")
  if jax.process_index() == 0:
    shards = [_load_shard(files, files.join(parts, f"shard-{s:05d}.npz")) for s in range(num_shards)]
    vectors = np.concatenate([x[0] for x in shards])
    mask = np.concatenate([x[1] for x in shards])
    video_index = np.concatenate([x[2] for x in shards])
    if not np.array_equal(video_index, np.arange(num_videos)):
      raise HammerError(f"{parts}: shards do not cover videos 0..{num_videos - 1} in order; delete the folder and "
                        "run again")
    t1 = time.time()
    index = FirstStageIndex.build(vectors, mask, kind=kind or config.eval.first_stage_index)
    index.save(path, meta)
    files.rmtree(parts)
    logging.info("index: %s (%s, %d videos, %d clip vectors, %.1f MB) built in %.1f s", path, index.kind, num_videos,
                 index.index.ntotal, index.nbytes() / 1e6, time.time() - t1)
  distributed.barrier("index_saved")
  return path


def _stamp(files, path: str) -> dict:
  try:
    stamp = json.loads(files.read_text(path))
    return stamp if isinstance(stamp, dict) else {}
  except (ValueError, UnicodeDecodeError):
    return {}


def _load_shard(files, path):
  import numpy as np
  from hammer_jax.retrieval import index_files

  def read(local):
    with np.load(local) as z:
      return z["vectors"], z["mask"], z["video_index"]

  return index_files.load_file(path, read, "encoded shard of an index build",
                               "delete it and run python -m hammer_jax.index again to re-encode it")


def main(argv):
  del argv
  startup.start()
  path = build_index(FLAGS.workdir, prepared_dir=FLAGS.prepared_dir, split=FLAGS.split, step=FLAGS.step,
                     kind=FLAGS.kind, videos_per_shard=FLAGS.videos_per_shard)
  print(f"Wrote {path}")
  startup.finish(0)


if __name__ == "__main__":
  startup.run(main)
