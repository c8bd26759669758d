"""Corpus-evaluation speed: (query, video) pairs scored per second, cached vs not, and projections.

HAMMER is a cross-encoder: every (query, video) pair of a corpus needs its own
pass through the cross-modal layers (section 3.5), so evaluation cost grows as
queries x videos. The `PairScorer` computes each query's query-only part and each
video's video-only part once and runs only the pair part per pair ("cached");
"plain" runs the whole forward (text branches, video branches, pair part) for
every pair. Both are timed here on TVR shapes (96 frames, 30 tokens, clip 16,
3,072 + 768-d, MiniLM text side, random weights and features), plus:
  * how the time grows with corpus size and query count (measured at small sizes),
  * the projected time of a full TVR val evaluation (10,895 queries x 2,179 videos,
    plus localisation of the top 100 videos per query) on this machine, and on
    one accelerator from the FLOP count at an assumed utilisation.

  python benchmarks/eval_benchmark.py --pairs 64
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.model_benchmark import make_config, random_batch  # noqa: E402
from hammer_jax.model import flops, build, hammer  # noqa: E402
from hammer_jax.retrieval.corpus import Corpus  # noqa: E402
from hammer_jax.retrieval.scorer import PairScorer  # noqa: E402

TVR_QUERIES, TVR_VIDEOS = 10_895, 2_179


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--pairs", type=int, default=64, help="pairs per timed measurement (queries x videos)")
  p.add_argument("--checkpoint", default="minilm")
  p.add_argument("--accelerator_tflops", type=float, default=989.0,
                 help="dense bf16 peak of the accelerator for the projection (H100 SXM: 989)")
  p.add_argument("--accelerator_mfu", type=float, default=0.35, help="assumed utilisation for the projection")
  return p.parse_args(argv)


def _timed(fn, *args, repeat: int = 2):
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None):
  args = parse_args(argv)
  ns = argparse.Namespace(max_frames=96, query_len=30, clip_len=16, num_negatives=1, flat=False, dtype="float32",
                          checkpoint=args.checkpoint, subtitle_dim=768)
  config = make_config(ns)
  config.eval.batch_size = 8
  model = build.create_model(config, 3072, 768)
  batch = random_batch(config, 8, 3072, 768)
  params = build.init_params(model, config, jax.random.key(0), batch)
  scorer = PairScorer(model, batch_size=8, decoding=config.model.decoding)  # no data needed: arrays in, scores out

  q_parts = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_query))(
      params, batch["query_ids"], batch["query_mask"])
  v_parts = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_video))(
      params, batch["video"], batch["subtitle"], batch["frame_mask"])
  q_np = jax.tree_util.tree_map(np.asarray, q_parts)
  corpus = Corpus(jax.tree_util.tree_map(np.asarray, v_parts), np.arange(8), np.full(8, 144.0), np.full(8, 1.5))

  # Cached: pair part only, a block of 8 queries x 8 videos.
  t_cached = _timed(lambda: scorer.vr_scores(params, q_np, corpus, batch_size=64, video_block=8))
  cached_rate = 64 / t_cached

  # Plain: the whole forward for each pair (8 pairs per call).
  @jax.jit
  def plain(p, b):
    q = model.apply(p, b["query_ids"], b["query_mask"], method=hammer.Hammer.encode_query)
    v = model.apply(p, b["video"], b["subtitle"], b["frame_mask"], method=hammer.Hammer.encode_video)
    return model.apply(p, q, v, retrieval_only=True, method=hammer.Hammer.score_pairs)["vr_score"]

  t_plain = _timed(plain, params, batch)
  plain_rate = 8 / t_plain

  # Localisation of a pair (full pair part with both heads and decoding).
  t_loc = _timed(lambda: scorer.localise(params, q_np, corpus, np.arange(8), np.arange(8), k=1))
  loc_rate = 8 / t_loc

  # Growth with corpus size and query count: time of vr_scores for growing V and Q.
  growth = []
  for nq, nv in ((8, 8), (8, 16), (16, 16)):
    qq = jax.tree_util.tree_map(lambda x: np.concatenate([x] * (nq // 8)), q_np)
    cc = Corpus(jax.tree_util.tree_map(lambda x: np.concatenate([x] * (nv // 8)), corpus.parts), np.arange(nv),
                np.full(nv, 144.0), np.full(nv, 1.5))
    growth.append((nq, nv, _timed(lambda: scorer.vr_scores(params, qq, cc, batch_size=64, video_block=8),
                                  repeat=1)))

  config.data.num_negatives = 1  # so that forward_flops counts one retrieval-only pair
  parts = flops.forward_flops(build.model_config(config, 3072, 768), num_frames=96, query_len=30,
                              num_negatives=1, mlm_predictions=0)
  pair_flops = {"pair_retrieval": parts["negatives"], "pair": parts["positive"]}
  pairs = TVR_QUERIES * TVR_VIDEOS
  here_s = pairs / cached_rate + TVR_QUERIES * 100 / loc_rate
  acc_rate = args.accelerator_tflops * 1e12 * args.accelerator_mfu
  acc_s = (pairs * pair_flops["pair_retrieval"] + TVR_QUERIES * 100 * pair_flops["pair"]) / acc_rate

  print(f"Eval speed, TVR shapes, MiniLM text side, float32, {os.cpu_count()} CPU cores, {jax.default_backend()}")
  print("| measurement | value |")
  print("|---|---|")
  print(f"| VR pairs/s, cached (pair part only) | {cached_rate:.1f} |")
  print(f"| VR pairs/s, plain (whole forward per pair) | {plain_rate:.1f} |")
  print(f"| caching speed-up | {cached_rate / plain_rate:.2f}x |")
  print(f"| localised pairs/s (both heads + decoding) | {loc_rate:.1f} |")
  for nq, nv, t in growth:
    print(f"| VR scoring {nq} queries x {nv} videos | {t:.2f} s ({nq * nv / t:.1f} pairs/s) |")
  print(f"| GFLOP per VR pair / per localised pair | {pair_flops['pair_retrieval'] / 1e9:.2f} / "
        f"{pair_flops['pair'] / 1e9:.2f} |")
  print(f"| projected TVR val ({TVR_QUERIES} x {TVR_VIDEOS} pairs + top-100 localisation), here | "
        f"{here_s / 86400:.1f} days |")
  print(f"| projected, one accelerator at {args.accelerator_tflops:.0f} TFLOP/s x {args.accelerator_mfu:.0%} | "
        f"{acc_s / 60:.1f} min |")


if __name__ == "__main__":
  main()
