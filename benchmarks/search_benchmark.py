"""Moment-search latency: the first query (builds the index) and later queries.

  python benchmarks/search_benchmark.py --workdir=workdir/demo [--queries 10]

Over a trained workdir (the demo's, for the synthetic corpus), it times
`MomentSearcher` start-up with no saved index (restore, then encode every
video's video-only parts and save them), its first search (compiles), a new
searcher that loads the saved index plus its first search, and then `--queries` further searches
(each: encode the query, score every (query, video) pair, decode the top_k
videos). Prints one JSON object; per-pair cost for projections to larger corpora
is `later_query_s / num_videos` (pairs dominate once the corpus is large).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

QUERIES = ["the dog runs in the kitchen", "a woman opens the red door", "in the park a boy is singing",
           "the man drinks coffee near the window", "a blue car is in the street"]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a trained workdir (e.g. the demo's)")
  p.add_argument("--queries", type=int, default=10, help="timed searches after the first")
  p.add_argument("--top_k", type=int, default=10)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  from hammer_jax import search
  t0 = time.perf_counter()
  # Restores, then builds and saves the index from scratch (a saved one is ignored).
  searcher = search.MomentSearcher(args.workdir, rebuild_index=True)
  startup = time.perf_counter() - t0
  t0 = time.perf_counter()
  searcher.search(QUERIES[0], top_k=args.top_k)
  first = time.perf_counter() - t0  # Includes compiling the query and pair programs.

  t0 = time.perf_counter()
  reloaded = search.MomentSearcher(args.workdir)
  reloaded.search(QUERIES[1], top_k=args.top_k)
  reload_first = time.perf_counter() - t0

  t0 = time.perf_counter()
  for i in range(args.queries):
    reloaded.search(QUERIES[i % len(QUERIES)], top_k=args.top_k)
  later = (time.perf_counter() - t0) / args.queries
  num_videos = len(reloaded.video_names)
  result = {"workdir": args.workdir, "num_videos": num_videos,
            "startup_with_index_build_s": round(startup, 2), "first_query_s": round(first, 2),
            "startup_from_saved_index_plus_first_query_s": round(reload_first, 2),
            "later_query_s": round(later, 3), "later_query_s_per_video": round(later / num_videos, 5)}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
