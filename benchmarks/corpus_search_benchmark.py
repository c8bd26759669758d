r"""Searching your own corpus at scale, through the real path: feature files -> data_prep.corpus ->
hammer_jax.index (FAISS index + parts store) -> single queries through the searcher and the web page.

For each corpus size N (`--sizes`, e.g. 10000,100000), on this machine:
  1. N feature files (`<name>.npy`, one row per 1.5 s, float16) at the model's
     video width, videos of TVR's train duration distribution
     (data_prep/tvr_durations.py), each row a mix of a few of 64 topic
     directions plus noise (so the first stage's lists are crowded as in a real
     corpus), with a durations CSV;
  2. `python -m data_prep.corpus` (wall time, peak RSS);
  3. `python -m hammer_jax.index` (FAISS index and the parts store: wall time,
     videos/s, peak RSS, bytes on disk of each);
  4. in a fresh process, `hammer_jax.search.MomentSearcher` two-stage with K =
     `--candidates`: `--queries` single queries with the page cache of the store
     dropped before each (cold: `posix_fadvise(DONTNEED)` on every store file),
     then the same queries again (warm); p50/p99 latency and the process's peak
     RSS;
  5. with `--http`: `python -m hammer_jax.app` on the corpus and the same
     queries through its HTTP API (gradio_client, one user), p50/p99.
Then a projection to a million videos from the measured per-video bytes, build
rate and latency. Results: `<out_dir>/results.json` and `table.md`.

The model is any trained workdir with the dual-encoder head; BENCHMARKS.md
names the one used (a demo-config model at 512-wide video features, 64 rows,
so that 100,000 videos' features, prepared data and store fit this machine's
disk).

  python benchmarks/corpus_search_benchmark.py --workdir=/tmp/cs/model --out_dir=/tmp/cs \
      --sizes=10000,100000 --queries=200 --http
  python benchmarks/corpus_search_benchmark.py --workdir=/tmp/cs/model --out_dir=/tmp/cs \
      --queries=100 --latency_only=/tmp/cs/n100000/corpus100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("man woman dog cat car door table kitchen street phone cup window chair bed ball tree house office "
         "doctor nurse child book bag hat shirt glass bottle computer road beach park river").split()
VERBS = "opens holds walks runs sits talks looks picks throws drinks reads drives".split()


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="trained workdir with the dual-encoder head")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--sizes", default="10000,100000")
  p.add_argument("--queries", type=int, default=200)
  p.add_argument("--candidates", type=int, default=20)
  p.add_argument("--http", action="store_true", help="also measure the web page's HTTP API")
  p.add_argument("--port", type=int, default=7931)
  p.add_argument("--latency_only", default="", metavar="PREPARED_DIR",
                 help="only step 4 (search latency, one JSON line) on this prepared corpus, already indexed")
  return p.parse_args(argv)


def queries(n: int) -> list[str]:
  import numpy as np
  rng = np.random.default_rng(1)
  return [f"the {rng.choice(WORDS)} {rng.choice(VERBS)} the {rng.choice(WORDS)} near the {rng.choice(WORDS)}"
          for _ in range(n)]


def make_features(folder: str, n: int, width: int, seed: int = 0) -> dict:
  """N `.npy` files + `durations.csv` (resumable: a finished folder has `done.json`)."""
  import numpy as np
  from data_prep import tvr_durations
  done = os.path.join(folder, "done.json")
  if os.path.exists(done):
    return json.load(open(done))
  feats = os.path.join(folder, "features")
  os.makedirs(feats, exist_ok=True)
  rng = np.random.default_rng(seed)
  topics = rng.standard_normal((64, width)).astype(np.float32)
  t0, lines, rows_total = time.time(), ["video_name,seconds"], 0
  for i in range(n):
    duration = round(max(3.0, tvr_durations.tvr_duration(rng.uniform())), 2)
    rows = math.ceil(duration / 1.5)
    mix = topics[rng.choice(64, 3, replace=False)].sum(0)
    x = 0.5 * mix[None] + rng.standard_normal((rows, width)).astype(np.float32)
    np.save(os.path.join(feats, f"v{i:07d}.npy"), x.astype(np.float16))
    lines.append(f"v{i:07d},{duration}")
    rows_total += rows
  with open(os.path.join(folder, "durations.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")
  info = {"videos": n, "rows": rows_total, "seconds": round(time.time() - t0, 1), "bytes": _du(feats)}
  json.dump(info, open(done, "w"))
  return info


def _du(path: str) -> int:
  total = 0
  for folder, _, names in os.walk(path):
    total += sum(os.path.getsize(os.path.join(folder, n)) for n in names)
  return total


def timed(argv: list[str]) -> dict:
  """Runs a command under /usr/bin/time: wall seconds, peak RSS (GB), its stderr's last lines on failure."""
  out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *argv], capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    raise SystemExit(f"{' '.join(argv[:4])} failed:\n{out.stderr[-3000:]}")
  wall, rss_kb = re.findall(r"TIME ([\d.]+) (\d+)", out.stderr)[-1]
  return {"seconds": float(wall), "peak_rss_gb": round(int(rss_kb) / 2 ** 20, 2), "stdout": out.stdout[-2000:]}


def _evict(folder: str) -> None:
  """Drops `folder`'s files from the page cache (the next read comes from disk)."""
  for sub, _, names in os.walk(folder):
    for name in names:
      fd = os.open(os.path.join(sub, name), os.O_RDONLY)
      try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


def _pct(xs: list[float]) -> dict:
  import numpy as np
  return {"p50_s": round(float(np.percentile(xs, 50)), 4), "p99_s": round(float(np.percentile(xs, 99)), 4),
          "mean_s": round(float(np.mean(xs)), 4)}


def latency(args) -> dict:
  """In this (fresh) process: the searcher two-stage over the prepared corpus, cold then warm."""
  from hammer_jax import search
  prepared = args.latency_only
  t0 = time.time()
  searcher = search.MomentSearcher(args.workdir, prepared_dir=prepared, retrieval="two_stage",
                                   candidates=args.candidates)
  load = time.time() - t0
  assert searcher.index_status == "store", searcher.index_status
  rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  texts = queries(args.queries)
  for text in texts[:3]:  # compile the programs
    searcher.search(text, top_k=args.candidates)
  store = searcher.corpus.path  # the parts store's folder
  cold, warm = [], []
  for text in texts:
    _evict(store)
    t = time.time()
    searcher.search(text, top_k=args.candidates)
    cold.append(time.time() - t)
  for text in texts:
    t = time.time()
    searcher.search(text, top_k=args.candidates)
    warm.append(time.time() - t)
  return {"load_seconds": round(load, 1), "rss_after_load_gb": round(rss_loaded, 2),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
          "cold": _pct(cold), "warm": _pct(warm), "rows_read": int(searcher.corpus.rows_read),
          "queries": len(texts) * 2 + 3}


def http_latency(args, prepared: str) -> dict:
  from gradio_client import Client
  log = open(os.path.join(args.out_dir, "app.log"), "w")
  app = subprocess.Popen([sys.executable, "-m", "hammer_jax.app", f"--workdir={args.workdir}",
                          f"--prepared_dir={prepared}", f"--port={args.port}", f"--candidates={args.candidates}"],
                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  try:
    url = f"http://127.0.0.1:{args.port}/"
    deadline = time.time() + 900
    while True:
      try:
        client = Client(url, verbose=False)
        break
      except Exception:  # pylint: disable=broad-except
        if app.poll() is not None or time.time() > deadline:
          raise SystemExit(f"the app did not start; see {log.name}")
        time.sleep(2)
    texts = queries(args.queries)
    for text in texts[:3]:
      client.predict(text, args.candidates, args.candidates, "two_stage", api_name="/search")
    times = []
    for text in texts:
      t = time.time()
      client.predict(text, args.candidates, args.candidates, "two_stage", api_name="/search")
      times.append(time.time() - t)
    return _pct(times)
  finally:
    app.terminate()
    app.wait(timeout=60)


def run_size(args, n: int, width: int, subtitle_dim: int, max_frames: int, step: int) -> dict:
  base = os.path.join(args.out_dir, f"n{n}")
  made = make_features(base, n, width)
  prepared = os.path.join(base, f"corpus{n}")
  prep = timed([sys.executable, "-m", "data_prep.corpus", f"--features={base}/features", f"--out_dir={prepared}",
                f"--durations={base}/durations.csv", f"--subtitle_dim={subtitle_dim}", f"--max_frames={max_frames}",
                "--videos_per_shard=2048"])
  index = timed([sys.executable, "-m", "hammer_jax.index", f"--workdir={args.workdir}", f"--prepared_dir={prepared}"])
  from hammer_jax.data import prepared_data
  from hammer_jax.retrieval import index_files
  data = prepared_data.open_prepared(prepared)
  split = next(iter(data.manifest["splits"]))
  store = index_files.parts_store_path(args.workdir, data, split, step)
  faiss_file = index_files.first_stage_path(args.workdir, data, split, step)
  lat = json.loads(subprocess.run([sys.executable, __file__, f"--workdir={args.workdir}", f"--out_dir={args.out_dir}",
                                   f"--queries={args.queries}", f"--candidates={args.candidates}",
                                   f"--latency_only={prepared}"], capture_output=True, text=True, cwd=ROOT,
                                  check=True).stdout.strip().splitlines()[-1])
  store_bytes = _du(store)
  out = {"videos": n, "feature_files": made, "prepare": {k: v for k, v in prep.items() if k != "stdout"},
         "prepared_bytes": _du(prepared),
         "index": {k: v for k, v in index.items() if k != "stdout"},
         "index_videos_per_s": round(n / index["seconds"], 1),
         "faiss_bytes": os.path.getsize(faiss_file), "store_bytes": store_bytes,
         "store_bytes_per_video": round(store_bytes / n), "search": lat}
  if args.http:
    out["http"] = http_latency(args, prepared)
  return out


def table(results: dict) -> str:
  rows = ["| videos | prepare (s / GB RSS) | index + store (s, videos/s / GB RSS) | FAISS MB | store GB "
          "| search cold p50 / p99 (s) | warm p50 / p99 (s) | search peak RSS GB | HTTP p50 / p99 (s) |",
          "|---|---|---|---|---|---|---|---|---|"]
  for r in results["sizes"]:
    s, h = r["search"], r.get("http")
    http = f"{h['p50_s']} / {h['p99_s']}" if h else "-"
    rows.append(f"| {r['videos']:,} | {r['prepare']['seconds']:.0f} / {r['prepare']['peak_rss_gb']} "
                f"| {r['index']['seconds']:.0f}, {r['index_videos_per_s']} / {r['index']['peak_rss_gb']} "
                f"| {r['faiss_bytes'] / 1e6:.1f} | {r['store_bytes'] / 1e9:.2f} "
                f"| {s['cold']['p50_s']} / {s['cold']['p99_s']} | {s['warm']['p50_s']} / {s['warm']['p99_s']} "
                f"| {s['peak_rss_gb']} | {http} |")
  p = results["million"]
  rows.append("")
  rows.append(f"A million videos (projected from the largest size): store {p['store_tb']:.2f} TB + FAISS "
              f"{p['faiss_gb']:.1f} GB on disk; encoding {p['encode_hours_here']:.1f} h on this machine's CPUs at "
              f"the measured {p['videos_per_s']} videos/s (a multi-host job divides it by its processes: each "
              "encodes its own shards); search memory as measured (it does not hold the corpus).")
  return "\n".join(rows)


def main(argv=None):
  args = parse_args(argv)
  if args.latency_only:
    print(json.dumps(latency(args)))
    return
  from hammer_jax import restore
  os.makedirs(args.out_dir, exist_ok=True)
  config, model_data, _, _, step = restore.restore(args.workdir, None)
  width, sub = model_data.video_dim, model_data.subtitle_dim
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()
  results = {"machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
                        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB",
             "commit": commit, "workdir_step": step, "video_dim": width, "subtitle_dim": sub,
             "max_frames": int(config.data.max_frames), "candidates": args.candidates, "sizes": []}
  for n in (int(x) for x in args.sizes.split(",")):
    print(f"== {n} videos", flush=True)
    results["sizes"].append(run_size(args, n, width, sub, int(config.data.max_frames), step))
    print(json.dumps(results["sizes"][-1], indent=1), flush=True)
  big = results["sizes"][-1]
  results["million"] = {"store_tb": big["store_bytes_per_video"] * 1e6 / 1e12,
                        "faiss_gb": big["faiss_bytes"] / big["videos"] * 1e6 / 1e9,
                        "videos_per_s": big["index_videos_per_s"],
                        "encode_hours_here": 1e6 / big["index_videos_per_s"] / 3600}
  json.dump(results, open(os.path.join(args.out_dir, "results.json"), "w"), indent=1)
  md = table(results)
  open(os.path.join(args.out_dir, "table.md"), "w").write(md + "\n")
  print(md)


if __name__ == "__main__":
  main()
