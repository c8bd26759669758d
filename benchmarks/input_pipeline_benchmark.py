r"""Input-pipeline benchmark: TVR-shaped prepared data -> numpy batches -> device arrays.

  python -m benchmarks.input_pipeline_benchmark [--workdir=/tmp/hammer_input_bench \
      --num_videos=512 --batch_size=32 --steps=200 --max_frames=96 --max_query_len=30 \
      --video_dim=3072 --subtitle_dim=768 --queries_per_video=5]

Why: a training step must never wait for data. Each training example carries
`F x (3072 + 768)` float32 features (~1.5 MB at F=96), so the pipeline moves
tens of MB per batch; this measures whether it keeps up with the model (the
TVR-shaped MiniLM step on CPU takes seconds per batch of 8) and where it would not.

What is measured, in order:
1. Preparation: a random TVR-release-layout corpus (jsonl + 3072-d video h5 +
   768-d subtitle h5 with `-mask` keys, 60-100 rows of 1.5 s per video) is written
   once and converted with `data_prep.tvr.prepare_tvr`: videos/s and MB/s of
   TFRecords written. Reused when the workdir already holds it for the same
   arguments (the timing of the build that made it is then reported again).
2. Training: `TrainBatches` time to the first batch (shuffle buffer fill), then
   examples/s and MB/s (all arrays of the numpy batch) after a warm-up; the same
   again with `make_global_batch` onto a 1-device mesh, to include the
   host-to-device copy; plus the host-only parts (MLM masking + negatives, the
   device copy of one fixed batch) on their own, to locate a bottleneck.
3. Evaluation: one pass of `eval_video_batches` over the corpus (videos/s, MB/s).
4. Resume: time to the first batch with `start_step=0` and with `start_step` one
   and a half epochs in (by design it skips whole epochs and re-reads at most one).
The table (with nproc, CPU model, memory, load) is printed as markdown and written
as JSON to `<workdir>/input_pipeline_benchmark.json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter hides the table.

import h5py
import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/hammer_input_bench", "Folder for the corpus, prepared data and JSON result.")
flags.DEFINE_integer("num_videos", 512, "Videos in the synthetic train split.")
flags.DEFINE_integer("queries_per_video", 5, "Queries per video (TVR has 5).")
flags.DEFINE_integer("video_dim", 3072, "Visual feature width (TVR: ResNet-152 ++ I3D).")
flags.DEFINE_integer("subtitle_dim", 768, "Subtitle feature width (TVR: RoBERTa).")
flags.DEFINE_integer("batch_size", 32, "Local batch size of the training and eval streams.")
flags.DEFINE_integer("steps", 200, "Timed training batches (per measurement).")
flags.DEFINE_integer("warmup", 5, "Untimed batches before the timed ones.")
flags.DEFINE_integer("max_frames", 96, "PipelineSpec.max_frames (F).")
flags.DEFINE_integer("max_query_len", 30, "PipelineSpec.max_query_len (L).")
flags.DEFINE_integer("clip_len", 16, "PipelineSpec.clip_len (configs/base.py default).")
flags.DEFINE_integer("seed", 0, "Corpus seed.")

MB = 1e6
FRAME_SECONDS = 1.5
MARKER_VERSION = 2  # Bump when the corpus or the recorded preparation metrics change.


def machine() -> dict:
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
  mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
  return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu, "memory_gb": round(mem_kb / 1e6, 1),
          "loadavg_start": open("/proc/loadavg").read().split()[:3]}


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def write_raw_corpus(raw: str, args: dict) -> None:
  """Random TVR-release-layout files: features are noise, queries real English words."""
  from hammer_jax.model import pretrained
  rng = np.random.default_rng(args["seed"])
  # Whole words of the tokenizer's vocabulary: realistic WordPiece lengths (~1 token/word).
  vocab = os.path.join(pretrained.resolve_checkpoint_dir(need_weights=False), "vocab.txt")
  words = [w for w in open(vocab, encoding="utf-8").read().split() if w.isalpha() and 3 <= len(w) <= 10]
  os.makedirs(raw, exist_ok=True)
  with open(os.path.join(raw, "tvr_train_release.jsonl"), "w") as jl, \
       h5py.File(os.path.join(raw, "video_feature.h5"), "w") as vh, \
       h5py.File(os.path.join(raw, "sub_feature.h5"), "w") as sh:
    for i in range(args["num_videos"]):
      name = f"bench_{i:06d}"
      rows = int(rng.integers(60, 101))  # 60-100 rows; > max_frames ones get truncated, as in TVR.
      duration = round(rows * FRAME_SECONDS - float(rng.uniform(0.01, 1.49)), 2)  # ceil(d / 1.5) == rows
      vh[name] = rng.random((rows, args["video_dim"]), dtype=np.float32)
      sh[name] = rng.random((rows, args["subtitle_dim"]), dtype=np.float32)
      sh[name + "-mask"] = (rng.random(rows) < 0.5).astype(np.float32)
      for q in range(args["queries_per_video"]):
        st = round(float(rng.uniform(0, duration - 3)), 2)
        ed = round(min(duration, st + float(rng.uniform(2, 30))), 2)
        desc = " ".join(rng.choice(words, size=int(rng.integers(6, 16)))).capitalize() + "."
        jl.write(json.dumps({"vid_name": name, "duration": duration, "ts": [st, ed], "desc": desc,
                             "type": "vt", "desc_id": i * args["queries_per_video"] + q}) + "\n")


def build_corpus(workdir: str, args: dict) -> dict:
  """Raw files + prepared data, built once per argument set; returns the preparation metrics."""
  from data_prep.tvr import prepare_tvr
  marker = os.path.join(workdir, "bench_corpus.json")
  raw, prepared = os.path.join(workdir, "raw"), os.path.join(workdir, "prepared")
  if os.path.exists(marker) and os.path.exists(os.path.join(prepared, "prepared.json")):
    done = json.load(open(marker))
    if done["args"] == args and done.get("version") == MARKER_VERSION:
      return dict(done["prep"], reused=True)
  for d in (raw, prepared):  # Other arguments: rebuild from scratch (prepare_tvr would resume).
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.perf_counter()
  write_raw_corpus(raw, args)
  raw_s = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  prepare_tvr(prepared, split_files={"train": os.path.join(raw, "tvr_train_release.jsonl")},
              video_feature=[os.path.join(raw, "video_feature.h5")],
              subtitle_feature=os.path.join(raw, "sub_feature.h5"))
  prep_s, prep_cpu = time.perf_counter() - t0, time.process_time() - c0
  prep = {"raw_seconds": raw_s, "raw_mb": dir_bytes(raw) / MB, "prep_seconds": prep_s,
          "prep_cpu_seconds": prep_cpu, "prep_mb": dir_bytes(prepared) / MB}
  with open(marker, "w") as f:
    json.dump({"version": MARKER_VERSION, "args": args, "prep": prep}, f, indent=1)
  return dict(prep, reused=False)


def batch_mb(batch: dict) -> float:
  return sum(np.asarray(v).nbytes for v in batch.values()) / MB


def time_train(data, spec, b: int, steps: int, warmup: int, mesh=None, start_step: int = 0):
  """(s to first batch, wall s and process CPU s for `steps` batches, MB of those batches)."""
  import jax
  from hammer_jax.data.input_pipeline import TrainBatches, make_global_batch
  t0 = time.perf_counter()
  it = TrainBatches(data, "train", spec, local_batch_size=b, seed=0, start_step=start_step,
                    process_index=0, process_count=1)
  next(it)
  first = time.perf_counter() - t0
  if not steps:
    return first, 0.0, 0.0, 0.0
  for _ in range(warmup):
    next(it)
  mb, t0, c0 = 0.0, time.perf_counter(), time.process_time()
  for _ in range(steps):
    batch = next(it)
    mb += batch_mb(batch)
    if mesh is not None:  # Block: the copy must be finished, as a train step would need it.
      jax.block_until_ready(make_global_batch(batch, mesh))
  return first, time.perf_counter() - t0, time.process_time() - c0, mb


def main(argv):
  del argv
  import jax
  import tensorflow as tf  # Imported before any timer: TF start-up is not pipeline cost.
  from hammer_jax.data.input_pipeline import (PipelineSpec, eval_video_batches, make_global_batch,
                                         TrainBatches)
  from hammer_jax.data.sampling import mask_tokens, sample_negatives
  from hammer_jax.data.prepared_data import open_prepared
  del tf
  logging.set_verbosity(logging.ERROR)  # TFDS logs INFO/deprecation lines per builder and video.
  f = FLAGS
  os.makedirs(f.workdir, exist_ok=True)
  info = machine()
  args = {k: getattr(f, k) for k in ("num_videos", "queries_per_video", "video_dim", "subtitle_dim", "seed")}
  rows: list[tuple[str, float, str]] = []
  add = lambda metric, value, unit: rows.append((metric, float(value), unit))

  prep = build_corpus(f.workdir, args)
  tag = " (earlier build, reused)" if prep["reused"] else ""
  add("raw corpus write" + tag, prep["raw_seconds"], "s")
  add("prepare_tvr wall time" + tag, prep["prep_seconds"], "s")
  add("prepare_tvr videos/s" + tag, f.num_videos / prep["prep_seconds"], "videos/s")
  add("prepare_tvr MB written/s" + tag, prep["prep_mb"] / prep["prep_seconds"], "MB/s")
  add("prepare_tvr CPU time" + tag, prep["prep_cpu_seconds"], "CPU s")
  add("prepared data size", prep["prep_mb"], "MB")

  data = open_prepared(os.path.join(f.workdir, "prepared"))
  from configs import base
  data_config = base.get_base_config().data
  data_config.max_frames, data_config.max_query_len, data_config.clip_len = f.max_frames, f.max_query_len, f.clip_len
  spec = PipelineSpec.from_config(data_config)
  b, n = f.batch_size, data.split("train")["num_queries"]

  # Process CPU time (all threads, tf.data's included) next to wall time: on a
  # shared machine it says what the pipeline costs when wall time says what it got.
  first, secs, cpu, mb = time_train(data, spec, b, f.steps, f.warmup)
  add("train: time to first batch (fresh process)", first, "s")
  add("train: numpy batch size", mb / f.steps, "MB/batch")
  add("train: examples/s (numpy)", f.steps * b / secs, "examples/s")
  add("train: MB/s (numpy)", mb / secs, "MB/s")
  add("train: ms/batch (numpy)", 1e3 * secs / f.steps, "ms")
  add("train: CPU ms/batch (numpy, all threads)", 1e3 * cpu / f.steps, "CPU ms")

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  _, secs, cpu, mb = time_train(data, spec, b, f.steps, f.warmup, mesh=mesh)
  add(f"train + make_global_batch ({jax.devices()[0].platform}): examples/s", f.steps * b / secs, "examples/s")
  add("train + make_global_batch: MB/s", mb / secs, "MB/s")
  add("train + make_global_batch: CPU ms/batch", 1e3 * cpu / f.steps, "CPU ms")

  # Host-side parts on their own: they run in the caller's thread, not in tf.data's
  # pool, so any time they take is added to every step.
  it = TrainBatches(data, "train", spec, local_batch_size=b, seed=0, process_index=0, process_count=1)
  sample = next(it)
  del it
  reps, rng = 50, np.random.default_rng(0)
  t0 = time.perf_counter()
  for _ in range(reps):
    mask_tokens(sample["query_ids"], sample["query_mask"], rng, spec, data.manifest["special_token_ids"],
                int(data.manifest["vocab_size"]))
    sample_negatives(sample["video_index"], spec.num_negatives, rng)
  add("host MLM masking + negatives", 1e3 * (time.perf_counter() - t0) / reps, "ms/batch")
  # On the CPU backend jax may alias an aligned numpy buffer instead of copying it, so
  # there this is an upper bound (it varies run to run); on a GPU it is the PCIe copy.
  jax.block_until_ready(make_global_batch(sample, mesh))
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(make_global_batch(sample, mesh))
  secs = (time.perf_counter() - t0) / reps
  add("make_global_batch alone (same batch)", batch_mb(sample) / secs, "MB/s")

  t0, c0, videos, mb = time.perf_counter(), time.process_time(), 0, 0.0
  for batch in eval_video_batches(data, "train", spec, b, process_index=0, process_count=1):
    videos += int(batch["example_mask"].sum())
    mb += batch_mb(batch)
  secs, cpu = time.perf_counter() - t0, time.process_time() - c0
  add("eval_video_batches: videos/s", videos / secs, "videos/s")
  add("eval_video_batches: MB/s", mb / secs, "MB/s")
  add("eval_video_batches: CPU ms/video", 1e3 * cpu / videos, "CPU ms")

  # One and a half epochs in: resuming skips epoch 0 and re-reads half of epoch 1.
  k = math.ceil(1.5 * n / b)
  first_batch = lambda step: float(np.median([time_train(data, spec, b, 0, 0, start_step=step)[0]
                                                for _ in range(3)]))  # Median of 3: one try is noisy.
  add("resume: time to first batch, start_step=0", first_batch(0), "s")
  add(f"resume: time to first batch, start_step={k} (1.5 epochs)", first_batch(k), "s")

  info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
  print(f"\nInput pipeline benchmark: {f.num_videos} videos x {f.queries_per_video} queries ({n} examples), "
        f"B={b}, F={f.max_frames}, L={f.max_query_len}, video {f.video_dim}-d, subtitle {f.subtitle_dim}-d")
  print(f"Machine: nproc {info['nproc']}, {info['cpu_model']}, {info['memory_gb']} GB, "
        f"load {' '.join(info['loadavg_start'])} (start) / {' '.join(info['loadavg_end'])} (end)\n")
  print("| metric | value | unit |\n|---|---:|---|")
  for metric, value, unit in rows:
    print(f"| {metric} | {value:.4g} | {unit} |")
  out = os.path.join(f.workdir, "input_pipeline_benchmark.json")
  with open(out, "w") as fh:
    json.dump({"machine": info, "flags": {k: getattr(f, k) for k in
                                          ("batch_size", "steps", "warmup", "max_frames", "max_query_len",
                                           "clip_len", *args)},
               "examples_per_epoch": n, "metrics": [{"metric": m, "value": v, "unit": u} for m, v, u in rows]},
              fh, indent=1)
  print(f"\nwritten to {out}")


if __name__ == "__main__":
  app.run(main)
