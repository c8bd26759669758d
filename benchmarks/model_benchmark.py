"""Forward and training-step speed of HAMMER, and model-FLOPs utilisation (MFU).

Default shapes are TVR's (paper supplement 6.1.4) with the MiniLM text side:
96 frames, 30 query tokens, clip length 16, visual 3072-d + subtitle 768-d,
`data.num_negatives` VR negatives per query, 5 MLM predictions. Params are the
real init (random + the MiniLM text branches); features are random (speed does
not depend on them).

Measured in one run:
  * forward: jitted `Hammer.__call__` (deterministic), per example;
  * train step: jitted value_and_grad of the total loss (dropout on) + Adam update;
  * peak: the best float32 `jnp.dot` throughput on this machine (square matmul);
  * MFU = flops.py FLOPs per example / time per example / peak. flops.py counts
    matmul FLOPs only and a training step as 3x the forward; XLA's own
    `cost_analysis` count (which adds element-wise work, e.g. erf-GELU) is
    printed next to it.

Example:
  python benchmarks/model_benchmark.py --batch_size 8 --iters 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs.base import get_base_config  # noqa: E402
from hammer_jax.model import build, flops, losses  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch_size", type=int, default=8, help="queries (= videos) per batch")
  p.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (median reported)")
  p.add_argument("--max_frames", type=int, default=96, help="F: frames per video")
  p.add_argument("--query_len", type=int, default=30, help="L: query tokens")
  p.add_argument("--clip_len", type=int, default=16, help="M: frames per clip")
  p.add_argument("--num_negatives", type=int, default=None, help="VR negatives per query (default: config)")
  p.add_argument("--video_dim", type=int, default=3072)
  p.add_argument("--subtitle_dim", type=int, default=768, help="0: no ASR stream")
  p.add_argument("--flat", action="store_true", help="benchmark the FLAT baseline instead")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
  p.add_argument("--checkpoint", default="minilm", help="text checkpoint ('none': random BERT of config.model.bert)")
  p.add_argument("--peak_size", type=int, default=2048, help="side of the square matmul timed for the peak")
  p.add_argument("--skip_train", action="store_true", help="forward only")
  return p.parse_args(argv)


def make_config(args):
  c = get_base_config()
  c.data.max_frames = args.max_frames
  c.data.max_query_len = args.query_len
  c.data.clip_len = args.clip_len
  if args.num_negatives is not None:
    c.data.num_negatives = args.num_negatives
  c.data.use_subtitles = args.subtitle_dim > 0
  c.model.flat = args.flat
  c.model.dtype = args.dtype
  c.model.text_checkpoint = None if args.checkpoint.lower() == "none" else args.checkpoint
  return c


def random_batch(config, batch_size: int, video_dim: int, subtitle_dim: int, seed: int = 0) -> dict:
  batch = build.dummy_batch(config, video_dim, subtitle_dim, batch_size)
  rng = np.random.default_rng(seed)
  b, f = batch["frame_mask"].shape
  l, p, j = batch["query_ids"].shape[1], batch["mlm_positions"].shape[1], batch["neg_index"].shape[1]
  batch["video"] = rng.normal(size=batch["video"].shape).astype(np.float32)
  if "subtitle" in batch:
    batch["subtitle"] = rng.normal(size=batch["subtitle"].shape).astype(np.float32)
  batch["query_ids"] = rng.integers(1000, 20000, size=(b, l)).astype(np.int32)
  batch["mlm_positions"] = np.tile(np.arange(1, p + 1, dtype=np.int32), (b, 1))
  batch["mlm_targets"] = rng.integers(1000, 20000, size=(b, p)).astype(np.int32)
  batch["mlm_weights"] = np.ones((b, p), np.float32)
  start = rng.integers(0, f // 2, size=b)
  end = start + rng.integers(0, f // 2, size=b)
  batch["start_frame"], batch["end_frame"] = start.astype(np.int32), end.astype(np.int32)
  batch["start_clip"] = (start // config.data.clip_len).astype(np.int32)
  batch["end_clip"] = (end // config.data.clip_len).astype(np.int32)
  labels = np.zeros((b, f, 3), np.float32)
  labels[:, :, 2] = 1
  labels[np.arange(b), start] = (1, 0, 0)
  labels[np.arange(b), end] = (0, 1, 0)
  batch["frame_labels"] = labels
  batch["neg_index"] = np.stack([(np.arange(b) + 1 + k) % b for k in range(j)], axis=1).astype(np.int32)
  batch["neg_mask"] = np.ones((b, j), np.float32)
  return batch


def compile_and_time(jitted, *args, iters: int):
  """(compile seconds, XLA cost_analysis FLOPs, median seconds of `iters` runs after a warm-up run)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  xla_flops = compiled.cost_analysis()["flops"]
  fn = compiled
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, xla_flops, float(np.median(times))


def matmul_peak(size: int, iters: int) -> float:
  """Best float32 FLOP/s of a jitted size x size x size jnp.dot."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  best = float("inf")
  for _ in range(max(iters, 3)):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


def main(argv=None):
  args = parse_args(argv)
  config = make_config(args)
  b = args.batch_size
  model = build.create_model(config, args.video_dim, args.subtitle_dim)
  batch = random_batch(config, b, args.video_dim, args.subtitle_dim)
  batch = jax.device_put(batch)

  t0 = time.perf_counter()
  params = jax.jit(lambda r: build.init_random_params(model, r, batch))(jax.random.PRNGKey(0))
  params = build.load_pretrained_text(params, config)
  init_s = time.perf_counter() - t0
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

  forward = jax.jit(lambda p, x: model.apply(p, x, deterministic=True))
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def train_step(params, opt_state, batch, rng):
    def loss_fn(p):
      out = model.apply(p, batch, deterministic=False, rngs={"dropout": rng})
      return losses.hammer_loss(out, batch, config.loss)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step)
  rng = jax.random.PRNGKey(1)

  counts = flops.flops_per_example(config, args.video_dim, args.subtitle_dim)
  fwd_compile, xla_fwd, fwd_s = compile_and_time(forward, params, batch, iters=args.iters)
  rows = [("forward", fwd_compile, fwd_s, counts["forward"], xla_fwd / b)]
  if not args.skip_train:
    tr_compile, xla_train, tr_s = compile_and_time(train_step, params, opt_state, batch, rng, iters=args.iters)
    rows.append(("train step", tr_compile, tr_s, counts["train_step"], xla_train / b))
  peak = matmul_peak(args.peak_size, args.iters)

  name = "FLAT" if args.flat else "HAMMER"
  print(f"{name}: F={args.max_frames} L={args.query_len} clip={args.clip_len} "
        f"negatives={config.data.num_negatives} video_dim={args.video_dim} subtitle_dim={args.subtitle_dim} "
        f"dtype={args.dtype} text={config.model.text_checkpoint} hidden={model.config.bert.hidden_size} "
        f"batch={b} params={n_params / 1e6:.1f}M")
  print(f"devices: {jax.devices()}  cpu count: {os.cpu_count()}  load average: {os.getloadavg()[0]:.2f}")
  print(f"init (random + checkpoint): {init_s:.1f} s")
  print(f"float32 matmul peak ({args.peak_size}^3 jnp.dot, best of {max(args.iters, 3)}): {peak / 1e9:.1f} GFLOP/s")
  print(f"FLOPs per example (flops.py): query {counts['query'] / 1e9:.3f} G, video {counts['video'] / 1e9:.3f} G, "
        f"positive pair {counts['positive'] / 1e9:.3f} G, negatives {counts['negatives'] / 1e9:.3f} G, "
        f"MLM {counts['mlm'] / 1e9:.3f} G")
  header = (f"{'':<11} {'compile s':>9} {'ms/batch':>9} {'ms/example':>10} {'GFLOP/ex':>9} "
            f"{'XLA GFLOP/ex':>12} {'GFLOP/s':>8} {'MFU':>6}")
  print(header)
  print("-" * len(header))
  for label, compile_s, sec, fl, xla in rows:
    per_ex = sec / b
    achieved = fl / per_ex
    print(f"{label:<11} {compile_s:>9.1f} {sec * 1e3:>9.1f} {per_ex * 1e3:>10.1f} {fl / 1e9:>9.3f} "
          f"{xla / 1e9:>12.3f} {achieved / 1e9:>8.1f} {achieved / peak:>6.1%}")


if __name__ == "__main__":
  main()
