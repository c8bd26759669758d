"""A million-video first-stage index on this machine: build time, memory, query latency.

Encoding a million videos through HAMMER's video branches is not run here (the
encoder's videos/s is measured on the real corpus and the projected time
printed). Instead the index holds:
  * the real clip vectors of a prepared corpus (e.g. the 2,179 videos of
    `benchmarks/two_stage_benchmark.py`), encoded by the checkpoint, at corpus
    positions 0..R-1, and
  * generated clip vectors for the rest, at the model's real width
    (`model.dual_encoder_dim`) and clips per video (max_frames / clip_len):
    unit vectors scattered around the real ones (each generated video copies a
    random real video's clips plus noise), so the index's lists are as crowded
    near real answers as a real corpus would make them.
The index is the one `hammer_jax.index` builds at that size (`auto` -> IVF-PQ).

Latency, one query at a time, for queries of the real corpus:
  first stage: query vector -> FAISS search -> top K videos;
  end to end: tokenised query -> `retrieve.retrieve` two-stage (query encoding,
  FAISS, HAMMER scoring + localisation of the K candidates, Eq. 2 ranking). A
  generated video's candidate is re-scored with the parts of the real video it
  was generated from (its position modulo R): same shapes, same cost.

  python benchmarks/million_index_benchmark.py --workdir=/tmp/tvr_shaped/run \\
      --prepared_dir=/tmp/two_stage/data/prepared --out_dir=/tmp/million [--videos=1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--prepared_dir", required=True, help="the real corpus (its val split)")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--videos", type=int, default=1_000_000)
  p.add_argument("--queries", type=int, default=100)
  p.add_argument("--candidates", type=int, default=10)
  p.add_argument("--noise", type=float, default=0.3)
  p.add_argument("--chunk", type=int, default=50_000)
  return p.parse_args(argv)


class RealPartsIndex:
  """The million-video index seen through the real corpus: positions modulo R, deduplicated."""

  def __init__(self, index, real: int):
    self.index, self.real = index, real

  def search(self, query_vectors, num_videos):
    import numpy as np
    want = num_videos
    while True:  # copies of one real video count once: ask for more until num_videos real ones
      positions, scores = self.index.search(query_vectors, want)
      out = np.full((len(positions), num_videos), -1, np.int64)
      for q in range(len(positions)):
        seen = list(dict.fromkeys(int(p % self.real) for p in positions[q] if p >= 0))[:num_videos]
        out[q, :len(seen)] = seen
      if (out >= 0).all() or want >= self.index.num_videos:
        return out, scores[:, :num_videos]
      want *= 4


def _percentiles(xs):
  import numpy as np
  return {"p50_ms": round(1000 * float(np.percentile(xs, 50)), 2), "p99_ms": round(1000 * float(np.percentile(xs, 99)), 2)}


def main(argv=None):
  args = parse_args(argv)
  import faiss
  import numpy as np
  from hammer_jax import logs, restore
  from hammer_jax.data import input_pipeline, prepared_data
  from hammer_jax.retrieval import first_stage
  from hammer_jax.retrieval.evaluator import Evaluator
  from hammer_jax.retrieval.retrieve import retrieve
  from hammer_jax.retrieval.scorer import PairScorer
  logs.quiet_library_logs()
  config, _, model, params, step = restore.restore(args.workdir)
  data = prepared_data.open_prepared(args.prepared_dir)
  # Programs of K pairs: one query's candidates are one device call (search's shape).
  scorer = PairScorer(model, batch_size=args.candidates, decoding=config.model.decoding)
  ev = Evaluator(scorer, config, data, "val", top_k=args.candidates, max_queries=args.queries)
  t0 = time.time()
  corpus = ev.encode_corpus(params)
  clips, mask = scorer.embed_corpus(params, corpus)
  encode_vps = len(corpus) / (time.time() - t0)
  real, (k, e) = len(corpus), clips.shape[1:]
  print(f"real corpus: {real} videos encoded at {encode_vps:.1f} videos/s; {k} clips x {e} per video", flush=True)

  rng = np.random.default_rng(0)

  def chunk(start, n):
    """Videos [start, start + n): real ones first, then generated around random real ones."""
    src = np.arange(start, start + n) % real
    v = clips[src].copy()
    gen = np.arange(start, start + n) >= real
    v[gen] += args.noise / np.sqrt(e) * rng.normal(size=v[gen].shape).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v.astype(np.float32), mask[src]

  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  num_vectors = int(args.videos * mask.mean() * k)
  kind = first_stage.choose_kind(num_vectors)
  t0 = time.time()
  index = first_stage.FirstStageIndex(first_stage.FirstStageIndex.empty(e, kind, num_vectors), k, 0, kind)
  if kind == "ivfpq":
    sample_videos, _ = chunk(0, min(args.videos, 131_072 // k + real))
    index.train(sample_videos.reshape(-1, e)[rng.choice(sample_videos.shape[0] * k, min(131_072, sample_videos.shape[0] * k), replace=False)])
  train_s = time.time() - t0
  for start in range(0, args.videos, args.chunk):
    v, m = chunk(start, min(args.chunk, args.videos - start))
    index.add(v, m)
    print(f"\r  added {index.num_videos}/{args.videos} videos  {time.time() - t0:.0f}s", end="", flush=True)
  build_s = time.time() - t0
  print()
  nbytes = index.nbytes()
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  path = os.path.join(args.out_dir, "index.npz")
  os.makedirs(args.out_dir, exist_ok=True)
  t0 = time.time()
  index.save(path, {"benchmark": True})
  save_s = time.time() - t0
  t0 = time.time()
  loaded, _ = first_stage.FirstStageIndex.load(path)
  load_s = time.time() - t0

  q_parts = scorer.encode_queries(params, input_pipeline.eval_query_batches(
      [ev.queries.token_ids[r] for r in ev.rows], ev.spec.max_query_len, scorer.batch_size,
      process_index=0, process_count=1))
  qv = scorer.embed_queries(params, q_parts)
  gt = corpus.positions_of(ev.queries.video_index[ev.rows])
  faiss.omp_set_num_threads(os.cpu_count())
  first, hits = [], 0
  for i in range(len(qv)):
    t = time.time()
    positions, _ = loaded.search(qv[i:i + 1], args.candidates)
    first.append(time.time() - t)
    hits += int(gt[i] in positions[0] % real)  # the real video or one of its generated copies
  exact = first_stage.FirstStageIndex.build(clips, mask, kind="flat")
  exact_hits = sum(int(gt[i] in exact.search(qv[i:i + 1], args.candidates)[0][0]) for i in range(len(qv)))

  view = RealPartsIndex(loaded, real)
  end_to_end = []
  for i, r in enumerate(ev.rows):
    t = time.time()
    retrieve(scorer, params, corpus, [ev.queries.token_ids[r]], top_k=args.candidates,
             max_query_len=ev.spec.max_query_len, local=True, first_stage=view, candidates=args.candidates)
    end_to_end.append(time.time() - t)
  end_to_end = end_to_end[1:]  # the first call compiles
  out = {"machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
         "videos": args.videos, "clip_vectors": int(loaded.index.ntotal), "dim": int(e), "clips_per_video": int(k),
         "kind": loaded.kind, "index_bytes": nbytes, "index_gb": round(nbytes / 2 ** 30, 3),
         "peak_rss_gb": round(rss / 2 ** 20, 2), "rss_before_build_gb": round(rss0 / 2 ** 20, 2),
         "train_seconds": round(train_s, 1), "build_seconds": round(build_s, 1),
         "save_seconds": round(save_s, 1), "load_seconds": round(load_s, 1),
         "first_stage": _percentiles(first), "end_to_end": _percentiles(end_to_end), "candidates": args.candidates,
         "queries": len(qv),
         "query_video_or_copy_in_top_k": {"million": round(100 * hits / len(qv), 1),
                                 "real_corpus_exact": round(100 * exact_hits / len(qv), 1)},
         "encoder_videos_per_second": round(encode_vps, 1),
         "projected_encoding_hours_for_all": round(args.videos / encode_vps / 3600, 1)}
  with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out, indent=1))
  os.remove(path)
  return out


if __name__ == "__main__":
  main()
