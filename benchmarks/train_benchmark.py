"""Training-step throughput of the real training step on 1..N devices, and MFU.

What is timed is `train.make_train_step` (jitted with shardings, donated state):
the exact step `hammer_jax.main` runs, on a `data` mesh over the devices, with
the global batch sharded and parameters replicated. Shapes default to TVR's
(96 frames, 30 tokens, clip 16, 3072-d visual + 768-d subtitle, MiniLM text).
Each device count runs in its own process, since the number of (fake CPU)
devices is fixed when JAX starts (`--xla_force_host_platform_device_count`).

Reported per device count: ms/step, examples/s, model FLOP/s (flops.py count x
examples/s) and MFU against the float32 matmul peak measured in the same
process. On a CPU host the "devices" share the same cores, so this measures the
overhead of the sharded step rather than a speed-up; on accelerators the same
command shows the scaling.

  python benchmarks/train_benchmark.py --devices 1,8 --global_batch 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts (one process each)")
  p.add_argument("--global_batch", type=int, default=8, help="examples per step (must divide over devices)")
  p.add_argument("--steps", type=int, default=3, help="timed steps (after one compile step)")
  p.add_argument("--max_frames", type=int, default=96)
  p.add_argument("--query_len", type=int, default=30)
  p.add_argument("--clip_len", type=int, default=16)
  p.add_argument("--video_dim", type=int, default=3072)
  p.add_argument("--subtitle_dim", type=int, default=768)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--checkpoint", default="minilm", help="text checkpoint ('none': random BERT dims of the config)")
  p.add_argument("--out", default="", help="also write the results as JSON here")
  p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def worker(args) -> dict:
  """Runs in a process with a fixed device count; returns its measurements."""
  import jax
  from benchmarks.model_benchmark import make_config, matmul_peak, random_batch
  from hammer_jax.model import flops
  from hammer_jax.data import input_pipeline
  from hammer_jax.train import optimizer, loop as train
  from hammer_jax.train import state as ts
  cfg_args = argparse.Namespace(max_frames=args.max_frames, query_len=args.query_len, clip_len=args.clip_len,
                                num_negatives=None, flat=False, dtype=args.dtype, checkpoint=args.checkpoint,
                                subtitle_dim=args.subtitle_dim)
  config = make_config(cfg_args)
  config.optim.batch_size = args.global_batch
  training = ts.setup_training(config, args.video_dim, args.subtitle_dim)
  mesh = training.mesh
  ts.check_batch_size(args.global_batch, mesh)
  state = training.fresh_state(config, jax.random.key(0))
  step = train.make_train_step(training.model, config, training.tx, optimizer.learning_rate_schedule(config.optim),
                               training.shardings, mesh)
  batch = input_pipeline.make_global_batch(
      random_batch(config, args.global_batch, args.video_dim, args.subtitle_dim), mesh)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  state, m = step(state, batch, rng)
  jax.block_until_ready(m["loss"])
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = step(state, batch, rng)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  per_step = sorted(times)[len(times) // 2]
  flop = flops.flops_per_example(config, args.video_dim, args.subtitle_dim)["train_step"]
  peak = matmul_peak(2048, 3)
  rate = args.global_batch / per_step
  return {"devices": len(jax.devices()), "compile_s": compile_s, "ms_per_step": per_step * 1e3,
          "examples_per_s": rate, "model_gflops": flop * rate / 1e9, "peak_gflops": peak / 1e9,
          "mfu": flop * rate / peak, "backend": jax.default_backend()}


def main(argv=None):
  args = parse_args(argv)
  if args._worker:
    print("RESULT " + json.dumps(worker(args)))
    return
  rows = []
  for n in [int(x) for x in args.devices.split(",")]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", TF_CPP_MIN_LOG_LEVEL="2")
    passed = {k: v for k, v in vars(args).items() if k not in ("devices", "out", "_worker")}
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker"] + [f"--{k}={v}" for k, v in passed.items()]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not line:
      raise SystemExit(f"worker with {n} devices failed:\n{out.stderr[-3000:]}")
    rows.append(json.loads(line[0][len("RESULT "):]))
  print(f"Training step, global batch {args.global_batch}, TVR shapes (F={args.max_frames}, L={args.query_len}, "
        f"clip {args.clip_len}, {args.video_dim}+{args.subtitle_dim}-d), {args.dtype}, text={args.checkpoint}, "
        f"{os.cpu_count()} CPU cores, backend {rows[0]['backend']}")
  print("| devices | compile s | ms/step | examples/s | model GFLOP/s | peak GFLOP/s | MFU |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['compile_s']:.1f} | {r['ms_per_step']:.0f} | {r['examples_per_s']:.2f} | "
          f"{r['model_gflops']:.1f} | {r['peak_gflops']:.1f} | {100 * r['mfu']:.1f}% |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
