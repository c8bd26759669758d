r"""Builds the first-stage index of a corpus (dual-encoder clip vectors in FAISS) and its parts store.

  python -m hammer_jax.index --workdir=W [--prepared_dir=DIR] [--split=S] [--step=N]
      [--kind=auto|flat|ivfpq] [--videos_per_shard=2048] [--store=true|false]

Encodes every video of the corpus (default: the workdir's eval split; or a
folder prepared with `python -m data_prep.tvr`) with the checkpoint's video
branches and dual-encoder head, and saves a `first_stage.FirstStageIndex` as
`W/index/<corpus-id>_step<N>.npz`, with the vocabulary, checkpoint step and
fingerprints it was built from (index_files.py). Beside it, unless
`--store=false`, every video's video-only parts go into the parts store
`W/index/<corpus-id>_step<N>.store/` (`retrieval/parts_store.py`), from which
two-stage search reads its K candidates per query instead of holding the
corpus in memory. `hammer_jax.search` then answers two-stage from them; a later
mismatch is a one-line error there.

Encoding goes shard by shard of `videos_per_shard` videos: each shard's parts
are written into the store's files (a few videos at a time: parts never
accumulate; only the clip vectors do, which process 0 gathers to build FAISS,
1.6 GB at 100,000 videos of 16 clips x 256), then its done-marker, then its clip vectors
(atomically) under `W/index/<corpus-id>_step<N>.parts/`, so a killed build
resumes at the first unfinished shard, and on a multi-host job (same start-up
flags as training) process i encodes shards i, i + P, ..., writing files no
other process writes. Process 0 then builds and saves the FAISS index from
the clip vectors, stamps the store (`store.json`, last) and removes the
shards. A progress line gives videos/s and ETA.
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
flags.DEFINE_bool("store", True, "Also write the parts store that two-stage search reads its candidates from "
                  "(false: the FAISS index only; search then holds the corpus's parts in memory).")

SHARD_FORMAT = 2  # encoded shards carry duration and frame_seconds (the store's video table)


def build_index(workdir: str, *, prepared_dir: str | None = None, split: str | None = None, step: int | None = None,
                kind: str | None = None, videos_per_shard: int = 2048, store: bool = True,
                progress: bool = True) -> str:
  """Encodes, indexes, stores the parts (`store`) and saves; returns the index path (see the module docstring)."""
  import jax
  import numpy as np
  from hammer_jax import files
  from hammer_jax import restore
  from hammer_jax.data import input_pipeline
  from hammer_jax.retrieval import index_files, parts_store
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
  store_dir = index_files.parts_store_path(workdir, data, split, step)
  parts = path[:-len(".npz")] + ".parts"
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding)
  spec = input_pipeline.PipelineSpec.from_config(config.data)
  stamp = files.join(parts, "fingerprint.json")
  if jax.process_index() == 0:  # one process prepares; the others wait at the barrier
    # Shards of an earlier build of something else, or of one whose stamp is unreadable, are not reused.
    previous = _stamp(files, stamp)
    if (previous.get("fingerprint"), previous.get("format")) != (meta["fingerprint"], SHARD_FORMAT):
      files.rmtree(parts)
      files.atomic_write(stamp, json.dumps({"fingerprint": meta["fingerprint"], "format": SHARD_FORMAT,
                                            "videos_per_shard": videos_per_shard}))
  distributed.barrier("index_parts_ready")
  videos_per_shard = json.loads(files.read_text(stamp))["videos_per_shard"]  # a resumed build keeps its shards
  num_shards = max(1, -(-num_videos // videos_per_shard))
  writer = None
  if store:
    with_subtitles = bool(data.subtitle_dim) and spec.use_subtitles
    layout = parts_store.Layout(num_videos, num_shards, scorer.video_parts_shapes(
        params, spec.max_frames, data.video_dim, data.subtitle_dim if with_subtitles else None))
    writer = parts_store.StoreWriter(store_dir, layout, meta["fingerprint"])
    if jax.process_index() == 0:
      writer.prepare()
  elif jax.process_index() == 0 and (parts_store.read_stamp(store_dir) or {}).get("fingerprint") not in (
      None, meta["fingerprint"]):
    files.rmtree(store_dir)  # a store of other weights or data: search would refuse it
  distributed.barrier("index_store_ready")
  mine = [s for s in range(num_shards) if s % jax.process_count() == jax.process_index()]
  encoded = set(files.listdir(parts))
  stored = writer.done() if writer else set(mine)
  todo = [s for s in mine if f"shard-{s:05d}.npz" not in encoded or s not in stored]
  shard_range = lambda s: input_pipeline.process_range(num_videos, s, num_shards)
  total = sum(shard_range(s)[1] - shard_range(s)[0] for s in todo)
  done, t0 = 0, time.time()
  if len(todo) < len(mine):
    logging.info("index: resuming, %d of this process's %d shards already encoded", len(mine) - len(todo), len(mine))
  for s in todo:
    start, end = shard_range(s)
    batches = input_pipeline.eval_video_batches(data, split, spec, scorer.batch_size, process_index=s,
                                                process_count=num_shards)
    shard_writer = writer.shard(s) if writer else None
    pieces = []
    for item in scorer.embed_video_batches(params, batches, with_parts=writer is not None):
      b, keep = item[0], item[0]["example_mask"] > 0
      pieces.append((item[1], item[2], *(b[k][keep] for k in ("video_index", "duration", "frame_seconds"))))
      if shard_writer:
        shard_writer.add(item[3])  # written a file at a time: a shard's parts are never held whole
    if shard_writer:
      shard_writer.close()  # the store's files, then its done-marker, then (below) the vectors
    cat = lambda i: np.concatenate([p[i] for p in pieces])
    files.atomic_write_npz(files.join(parts, f"shard-{s:05d}.npz"), dict(
        vectors=cat(0), mask=cat(1), video_index=cat(2), duration=cat(3), frame_seconds=cat(4)))
    done += end - start
    if progress:
      rate = done / max(time.time() - t0, 1e-9)
      print(f"\r  index: encoded {done}/{total} videos  {rate:.1f} videos/s  ETA {(total - done) / rate:.0f}s",
            end="" if done < total else "\n", file=sys.stderr, flush=True)
  distributed.barrier("index_shards_done")
  if jax.process_index() == 0:
    # Clip vectors are small (FAISS holds them anyway); the parts are never gathered.
    shards = [_load_shard(files, files.join(parts, f"shard-{s:05d}.npz")) for s in range(num_shards)]
    vectors, mask, video_index, duration, frame_seconds = (np.concatenate([x[i] for x in shards]) for i in range(5))
    if not np.array_equal(video_index, np.arange(num_videos)):
      raise HammerError(f"{parts}: shards do not cover videos 0..{num_videos - 1} in order; delete the folder and "
                        "run again")
    t1 = time.time()
    index = FirstStageIndex.build(vectors, mask, kind=kind or config.eval.first_stage_index)
    index.save(path, meta)
    if writer:
      writer.finish(meta, video_index, duration, frame_seconds)  # the stamp, last
    files.rmtree(parts)
    logging.info("index: %s (%s, %d videos, %d clip vectors, %.1f MB) built in %.1f s%s", path, index.kind,
                 num_videos, index.index.ntotal, index.nbytes() / 1e6, time.time() - t1,
                 f"; parts store {store_dir} ({writer.layout.bytes_per_video() / 1e3:.1f} kB a video)" if writer
                 else "")
  distributed.barrier("index_saved")
  return path


def _stamp(files, path: str) -> dict:
  try:
    stamp = json.loads(files.read_text(path))
    return stamp if isinstance(stamp, dict) else {}
  except (OSError, ValueError, UnicodeDecodeError):
    return {}


def _load_shard(files, path):
  import numpy as np
  from hammer_jax.retrieval import index_files

  def read(local):
    with np.load(local) as z:
      return z["vectors"], z["mask"], z["video_index"], z["duration"], z["frame_seconds"]

  return index_files.load_file(path, lambda p: files.download(p, read), "encoded shard of an index build",
                               "delete it and run python -m hammer_jax.index again to re-encode it")


def main(argv):
  del argv
  startup.start()
  path = build_index(FLAGS.workdir, prepared_dir=FLAGS.prepared_dir, split=FLAGS.split, step=FLAGS.step,
                     kind=FLAGS.kind, videos_per_shard=FLAGS.videos_per_shard, store=FLAGS.store)
  print(f"Wrote {path}")
  startup.finish(0)


if __name__ == "__main__":
  startup.run(main)
