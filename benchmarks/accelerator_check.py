"""Accelerator check: the four figures an accelerator run should report, in one script of minutes.

At TVR's shapes (configs/tvr.py: 96 frames, 30 query tokens, clip 16, 3 VR
negatives, 3,072-d visual + 768-d subtitle features) with a random-init text
side of BERT-base widths (hidden 768, 12 heads, FFN 3,072, vocabulary 30,522;
each text branch takes the first `config.model.text_layers` = 5 of its 12
layers, as with a BERT-base checkpoint) and random features:

  1. train: the project's jitted, sharded, donated train step (`loop.make_train_step`)
     in bfloat16 (the `bf16` variant) on a synthetic batch: steps/s after a warm-up
     and MFU = flops.py's model FLOPs per step / (step time * peak FLOP/s of all
     devices). Peak: PEAK_TFLOPS by `device_kind`, `--peak_tflops`, else measured
     (the best float32 / bfloat16 square `jnp.dot` here: only meaningful on CPU).
  2. vr: exhaustive VR pairs/s of `PairScorer.vr_scores` (Eq. 9 for every query x
     video) over a synthetic corpus already encoded (`encode_videos`), after a
     warm-up that compiles the same block shapes; as evaluation runs it, so the
     host's block gathering and transfers count; with its MFU (flops.py's
     retrieval-only pair count).
  3. two_stage: single-query latency of `retrieve(..., first_stage=, local=True)`
     as `search` runs it (a scorer of batch 1, top 10, config.eval.first_stage_candidates
     re-scored) over a flat FAISS index of the corpus's dual-encoder clip vectors;
     p50 / p99 over `--latency_queries` after one warm-up query.
  4. agreement: the same random-init params scored with model.dtype bfloat16 and
     float32: VR score correlation and max |diff|, top-10 video overlap, top-1
     agreement, and agreement of the greedy start/end frames of every pair of the
     first `--agreement_videos` videos. Random init keeps score gaps small, so
     rank agreement here is a pessimistic bound on a trained model's. Sanity row:
     float32 against float32 at matmul precision "highest" (on GPUs the default
     float32 matmul is TF32; on CPU the two are equal, so agreement is exact).

  python benchmarks/accelerator_check.py --out=/tmp/accelerator_check.json
  python benchmarks/accelerator_check.py --dry_run --out=/tmp/x.json   # tiny shapes, on CPU

The full run is sized to fit in 8 minutes on one H200-class GPU (not yet timed on
one: no accelerator was available when it was written); the dry run takes 40-90 s
on a 2-core CPU, mostly compiling (less with a warm JAX compilation cache).

The JSON is rewritten after each part, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# (substring of the lower-cased device_kind, dense bf16 TFLOP/s per chip); the first match wins.
PEAK_TFLOPS = (("h100 pcie", 756.0), ("h200", 989.0), ("h100", 989.0), ("a100", 312.0),
               ("tpu v5 lite", 197.0), ("tpu v5e", 197.0), ("tpu v6", 918.0), ("tpu v5", 459.0),
               ("tpu v4", 275.0))
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103   # BERT uncased special tokens
TVR_DIMS = (3072, 768)                      # visual (ResNet-152 + I3D), subtitle widths


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dry_run", action="store_true", help="tiny shapes (configs/variants.py `tiny`), few steps, CPU")
  p.add_argument("--out", default="", help="write the results as JSON here")
  p.add_argument("--batch_size", type=int, default=0, help="global training batch (default config.optim.batch_size)")
  p.add_argument("--steps", type=int, default=0, help="timed training steps (default 20; dry run 2)")
  p.add_argument("--warmup_steps", type=int, default=2, help="training steps run after compiling, before timing")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s per device (default: the table)")
  p.add_argument("--videos", type=int, default=0, help="corpus videos (default 512; dry run 16)")
  p.add_argument("--queries", type=int, default=0, help="VR queries (default 64; dry run 8)")
  p.add_argument("--vr_pairs_per_call", type=int, default=0, help="pairs per VR program (default 1024; dry run 64)")
  p.add_argument("--latency_queries", type=int, default=0, help="timed two-stage queries (default 20; dry run 3)")
  p.add_argument("--agreement_videos", type=int, default=0, help="videos whose pairs are localised (default all)")
  return p.parse_args(argv)


def make_config(args, *, dtype: str, dual_encoder: bool):
  """configs/tvr.py with `dtype` and a random BERT-base text side (dry run: the `tiny` variant's sizes)."""
  from configs import tvr
  variants = (["tiny"] if args.dry_run else []) + (["bf16"] if dtype == "bfloat16" else [])
  c = tvr.get_config(",".join(variants))
  assert c.model.dtype == dtype, (c.model.dtype, dtype)
  c.model.text_checkpoint = None
  if not args.dry_run:
    c.model.bert = dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu")
  c.loss.use_dual_encoder = dual_encoder
  if args.batch_size:
    c.optim.batch_size = args.batch_size
  return c


def train_batch(config, batch_size: int, video_dim: int, subtitle_dim: int, rng) -> dict:
  """Random training batch with build.dummy_batch's keys and shapes; real lengths drawn per example."""
  from hammer_jax.model import build
  b = build.dummy_batch(config, video_dim, subtitle_dim, batch_size)
  f, l = b["frame_mask"].shape[1], b["query_ids"].shape[1]
  p, j, rows = b["mlm_positions"].shape[1], b["neg_index"].shape[1], np.arange(batch_size)
  frames = rng.integers(max(1, f // 3), f + 1, size=batch_size)
  b["frame_mask"] = (np.arange(f)[None] < frames[:, None]).astype(np.int32)
  for key in ("video", "subtitle"):
    if key in b:
      b[key] = rng.normal(size=b[key].shape).astype(np.float32) * b["frame_mask"][..., None]
  lengths = rng.integers(min(l, p + 3), l + 1, size=batch_size)  # room for [CLS], P masked words, [SEP]
  b["query_mask"] = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(1000, config.model.bert.vocab_size, size=(batch_size, l)).astype(np.int32)
  ids[:, 0], ids[rows, lengths - 1] = CLS_ID, SEP_ID
  b["mlm_positions"] = np.tile(np.arange(1, p + 1, dtype=np.int32), (batch_size, 1))
  b["mlm_targets"] = ids[rows[:, None], b["mlm_positions"]]
  b["mlm_weights"] = np.ones((batch_size, p), np.float32)
  ids[rows[:, None], b["mlm_positions"]] = MASK_ID
  b["query_ids"] = ids * b["query_mask"]
  start = rng.integers(0, frames)
  end = start + rng.integers(0, frames - start)
  clip = config.data.clip_len
  b.update(start_frame=start.astype(np.int32), end_frame=end.astype(np.int32),
           start_clip=(start // clip).astype(np.int32), end_clip=(end // clip).astype(np.int32))
  labels = np.zeros((batch_size, f, 3), np.float32)
  labels[..., 2] = b["frame_mask"]
  labels[rows, start] = (1.0, 0.0, 0.0)
  labels[rows, end] = np.where((start == end)[:, None], (0.5, 0.5, 0.0), (0.0, 1.0, 0.0))  # one frame: B and E
  b["frame_labels"] = labels
  b["neg_index"] = np.stack([(rows + 1 + k) % batch_size for k in range(j)], axis=1).astype(np.int32)
  b["neg_mask"] = np.ones((batch_size, j), np.float32)
  return b


def video_batches(config, n: int, batch_size: int, video_dim: int, subtitle_dim: int, seed: int = 0):
  """The corpus as `input_pipeline.eval_video_batches` yields it (last batch padded, example_mask 0).

  Each batch is drawn from its own seed, so every call yields the same corpus without holding it.
  Keys: video [b, F, Dv], subtitle [b, F, Ds], frame_mask [b, F], video_index, duration,
  frame_seconds, example_mask [b].
  """
  f = config.data.max_frames
  for first in range(0, n, batch_size):
    rng = np.random.default_rng(seed + first)
    real = np.arange(first, first + batch_size) < n
    frames = np.where(real, rng.integers(max(1, f // 3), f + 1, size=batch_size), 0)
    mask = (np.arange(f)[None] < frames[:, None]).astype(np.int32)
    yield {"video": rng.normal(size=(batch_size, f, video_dim)).astype(np.float32) * mask[..., None],
           "subtitle": rng.normal(size=(batch_size, f, subtitle_dim)).astype(np.float32) * mask[..., None],
           "frame_mask": mask, "video_index": np.where(real, np.arange(first, first + batch_size), -1).astype(np.int32),
           "duration": (frames * 1.5).astype(np.float32), "frame_seconds": np.full(batch_size, 1.5, np.float32),
           "example_mask": real.astype(np.int32)}


def query_tokens(config, n: int, seed: int) -> list:
  """n tokenised queries ([CLS] words [SEP]) of 8..max_query_len tokens."""
  rng, l = np.random.default_rng(seed), config.data.max_query_len
  return [np.concatenate([[CLS_ID], rng.integers(1000, config.model.bert.vocab_size, size=int(n_tok) - 2),
                          [SEP_ID]]).astype(np.int32) for n_tok in rng.integers(min(8, l), l + 1, size=n)]


def peak_flops(args, device_kind: str, n_devices: int) -> tuple[float, str]:
  """(peak FLOP/s of all devices, where it came from)."""
  per_chip, source = args.peak_tflops * 1e12, "--peak_tflops"
  if not per_chip:
    match = [t for key, t in PEAK_TFLOPS if key in device_kind.lower()]
    per_chip, source = (match[0] * 1e12, "table (dense bf16)") if match else (0.0, "")
  if not per_chip:
    size = 1024 if args.dry_run else 4096
    per_chip = max(matmul_flops(size, dt) for dt in (jnp.float32, jnp.bfloat16))
    source = f"measured (best float32/bfloat16 {size}^3 jnp.dot on one device)"
  return per_chip * n_devices, source


def matmul_flops(size: int, dtype) -> float:
  """Best FLOP/s of a jitted size^3 matmul in `dtype`, of 5 runs after a warm-up."""
  a = jnp.ones((size, size), dtype)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  best = float("inf")
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


def check_training(args, results, dims, peak) -> None:
  """Part 1: bf16 steps/s and MFU of the project's train step on a synthetic batch."""
  from hammer_jax.data import input_pipeline
  from hammer_jax.model import flops
  from hammer_jax.train import loop, optimizer
  from hammer_jax.train import state as ts
  config = make_config(args, dtype="bfloat16", dual_encoder=False)  # the paper's TVR model (no first stage)
  training = ts.setup_training(config, *dims)
  mesh, model, batch_size = training.mesh, training.model, config.optim.batch_size
  local = ts.check_batch_size(batch_size, mesh)
  state = training.fresh_state(config, jax.random.key(0))
  step = loop.make_train_step(model, config, training.tx, optimizer.learning_rate_schedule(config.optim),
                              training.shardings, mesh)
  rows = train_batch(config, batch_size, *dims, np.random.default_rng(0))
  offset = input_pipeline.local_batch_offset(mesh, batch_size)
  batch = input_pipeline.make_global_batch({k: v[offset:offset + local] for k, v in rows.items()}, mesh)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  for _ in range(max(1, args.warmup_steps)):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics["loss"])
  steps = args.steps or (2 if args.dry_run else 20)
  t0 = time.perf_counter()
  for _ in range(steps):  # dispatched back to back, one sync at the end, as the training loop runs
    state, metrics = compiled(state, batch, rng)
  loss = float(jax.device_get(metrics["loss"]))
  step_s = (time.perf_counter() - t0) / steps
  model_flops = flops.flops_per_example(config, *dims)["train_step"] * batch_size
  results["train"] = dict(
      dtype=config.model.dtype, batch_size=batch_size, steps=steps, compile_s=round(compile_s, 2),
      step_ms=step_s * 1e3, steps_per_s=1.0 / step_s, examples_per_s=batch_size / step_s,
      # cost_analysis counts one device's partitioned program (element-wise work included).
      model_flops_per_step=model_flops, xla_flops_per_step=float(cost.get("flops", np.nan)) * mesh.devices.size,
      model_tflops_per_s=model_flops / step_s / 1e12, mfu=model_flops / step_s / peak, loss=loss)
  r = results["train"]
  print(f"[train] bf16 step, batch {batch_size}: {r['step_ms']:.1f} ms/step, {r['steps_per_s']:.2f} steps/s, "
        f"{r['examples_per_s']:.1f} examples/s, {r['model_tflops_per_s']:.2f} model TFLOP/s, MFU {r['mfu']:.1%} "
        f"(compile {compile_s:.1f} s, loss {loss:.3f})", flush=True)


def score_corpus(config, dims, params, n_videos, tokens, pairs_per_call, *, agreement_videos, vr_timing):
  """One scoring run of `config`'s model with `params` over the synthetic corpus and `tokens`.

  Returns {"scorer", "corpus" (the encoded `Corpus`), "scores": [Q, V] f(v, h) of every pair,
  "vr_s": seconds of that `vr_scores` call, "frames": {"start", "end"}: [Q, V'] greedy-decoded
  frames of every pair of the first V' = agreement_videos (0: all) videos}.
  """
  from hammer_jax.data import input_pipeline
  from hammer_jax.model import build
  from hammer_jax.retrieval.corpus import Corpus
  from hammer_jax.retrieval.scorer import PairScorer
  scorer = PairScorer(build.create_model(config, *dims), batch_size=config.eval.batch_size,
                      decoding=config.model.decoding)
  corpus = scorer.encode_videos(params, video_batches(config, n_videos, scorer.batch_size, *dims))
  q_parts = scorer.encode_queries(params, input_pipeline.eval_query_batches(
      tokens, config.data.max_query_len, scorer.batch_size, process_index=0, process_count=1))
  out = {"scorer": scorer, "corpus": corpus}
  if vr_timing:  # compiles the VR blocks on the first 16 videos (the block shapes do not depend on V)
    head = min(16, len(corpus))
    scorer.vr_scores(params, q_parts, Corpus({k: v[:head] for k, v in corpus.parts.items()}, corpus.video_index[:head],
                                             corpus.duration[:head], corpus.frame_seconds[:head]),
                     batch_size=pairs_per_call)
  t0 = time.perf_counter()
  out["scores"] = scorer.vr_scores(params, q_parts, corpus, batch_size=pairs_per_call)
  out["vr_s"] = time.perf_counter() - t0
  q, v = len(tokens), min(agreement_videos or n_videos, n_videos)
  q_rows, v_rows = np.repeat(np.arange(q), v), np.tile(np.arange(v), q)
  loc = scorer.localise(params, q_parts, corpus, q_rows, v_rows, k=1, batch_size=max(pairs_per_call // 2, 1))
  out["frames"] = {key: loc[key].reshape(q, v) for key in ("start", "end")}
  return out


def agreement(a, b, top: int = 10) -> dict:
  """How far scoring run `b` is from run `a` (score_corpus outputs) on the same queries and corpus."""
  from hammer_jax.retrieval import inference
  sa, sb = a["scores"].astype(np.float64), b["scores"].astype(np.float64)
  top = min(top, sa.shape[1])
  ta, tb = inference.rank_videos(sa)[:, :top], inference.rank_videos(sb)[:, :top]
  fa, fb = a["frames"], b["frames"]
  same_start, same_end = fa["start"] == fb["start"], fa["end"] == fb["end"]
  return dict(vr_score_correlation=float(np.corrcoef(sa.ravel(), sb.ravel())[0, 1]),
              vr_score_max_abs_diff=float(np.abs(sa - sb).max()), vr_score_std=float(sa.std()),
              top10_overlap=float(np.mean([len(set(x) & set(y)) / top for x, y in zip(ta, tb)])),
              top1_agreement=float(np.mean(ta[:, 0] == tb[:, 0])),
              start_frame_agreement=float(same_start.mean()), end_frame_agreement=float(same_end.mean()),
              span_agreement=float((same_start & same_end).mean()), localised_pairs=int(same_start.size))


def check_retrieval(args, results, dims, peak, write) -> None:
  """Parts 2-4: exhaustive VR pairs/s, two-stage single-query latency, bf16-vs-float32 agreement."""
  from jax.sharding import NamedSharding, PartitionSpec
  from hammer_jax.model import build, flops
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  from hammer_jax.retrieval.retrieve import retrieve
  from hammer_jax.retrieval.scorer import PairScorer, local_mesh
  config = make_config(args, dtype="bfloat16", dual_encoder=True)   # the first stage needs the dual-encoder head
  n_videos, n_queries = args.videos or (16 if args.dry_run else 512), args.queries or (8 if args.dry_run else 64)
  pairs_per_call = args.vr_pairs_per_call or (64 if args.dry_run else 1024)
  model = build.create_model(config, *dims)
  example = build.dummy_batch(config, *dims, batch_size=1)
  params = jax.jit(lambda r: build.init_random_params(model, r, example))(jax.random.key(2))
  params = jax.device_put(params, NamedSharding(local_mesh(), PartitionSpec()))  # replicated, as evaluation has them
  tokens = query_tokens(config, n_queries, seed=3)
  bf16 = score_corpus(config, dims, params, n_videos, tokens, pairs_per_call,
                      agreement_videos=args.agreement_videos, vr_timing=True)
  cfg = build.model_config(config, *dims)
  pair_flops = flops.forward_flops(cfg, num_frames=config.data.max_frames, query_len=config.data.max_query_len,
                                   num_negatives=1, mlm_predictions=config.data.max_mlm_predictions)["negatives"]
  rate = n_queries * n_videos / bf16["vr_s"]
  results["vr"] = dict(dtype="bfloat16", videos=n_videos, queries=n_queries, pairs_per_call=pairs_per_call,
                       seconds=bf16["vr_s"], pairs_per_s=rate, model_flops_per_pair=pair_flops,
                       mfu=rate * pair_flops / peak)
  print(f"[vr] exhaustive VR, {n_queries} queries x {n_videos} videos: {rate:,.0f} pairs/s "
        f"({bf16['vr_s']:.2f} s, {pairs_per_call} pairs per program, MFU {results['vr']['mfu']:.1%})", flush=True)
  write()

  # Part 3: search's path, one query at a time (scorer of batch 1: programs of one row per device).
  t0 = time.perf_counter()
  index = FirstStageIndex.build(*bf16["scorer"].embed_corpus(params, bf16["corpus"]))
  build_s = time.perf_counter() - t0
  searcher = PairScorer(model, batch_size=1, decoding=config.model.decoding)
  candidates = min(config.eval.first_stage_candidates, n_videos)
  n_latency = args.latency_queries or (3 if args.dry_run else 20)
  latencies = []
  for ids in query_tokens(config, n_latency + 1, seed=4):
    t0 = time.perf_counter()
    retrieve(searcher, params, bf16["corpus"], [ids], top_k=10, max_query_len=config.data.max_query_len,
             local=True, vr_pairs_per_call=256, first_stage=index, candidates=candidates)
    latencies.append(time.perf_counter() - t0)
  ms = np.asarray(latencies[1:]) * 1e3  # the first query compiles
  results["two_stage"] = dict(queries=n_latency, candidates=candidates, top_k=10, index_kind=index.kind,
                              index_build_s=build_s, first_query_ms=latencies[0] * 1e3,
                              p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                              mean_ms=float(ms.mean()))
  r = results["two_stage"]
  print(f"[two_stage] single query, {candidates} candidates of {n_videos} videos ({index.kind} index): "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms over {n_latency} queries "
        f"(first query {r['first_query_ms']:.0f} ms)", flush=True)
  write()

  # Part 4: the same params in float32 (the project's float32 mode), then float32 at matmul precision "highest".
  f32_config = make_config(args, dtype="float32", dual_encoder=True)
  common = dict(agreement_videos=args.agreement_videos, vr_timing=False)
  f32 = score_corpus(f32_config, dims, params, n_videos, tokens, pairs_per_call, **common)
  results["agreement"] = {"bf16_vs_float32": agreement(f32, bf16)}
  write()
  with jax.default_matmul_precision("highest"):
    exact = score_corpus(f32_config, dims, params, n_videos, tokens, pairs_per_call, **common)
  results["agreement"]["float32_vs_float32_highest"] = agreement(exact, f32)
  for name, a in results["agreement"].items():
    print(f"[agreement] {name}: VR score correlation {a['vr_score_correlation']:.5f}, max |diff| "
          f"{a['vr_score_max_abs_diff']:.3g} (score std {a['vr_score_std']:.3g}); top-10 overlap "
          f"{a['top10_overlap']:.1%}, top-1 {a['top1_agreement']:.1%}; greedy start {a['start_frame_agreement']:.1%}, "
          f"end {a['end_frame_agreement']:.1%}, span {a['span_agreement']:.1%} of {a['localised_pairs']} pairs",
          flush=True)


def main(argv=None):
  args = parse_args(argv)
  t_start = time.perf_counter()
  if args.dry_run:
    # Compiling threefry's random init of ~200 parameter shapes takes ~30 s on a 2-core CPU; XLA's
    # RngBitGenerator compiles in a fraction of that. The real run keeps the project's default (threefry).
    jax.config.update("jax_default_prng_impl", "rbg")
  device = jax.devices()[0]
  dims = (64, 64) if args.dry_run else TVR_DIMS
  peak, source = peak_flops(args, device.device_kind, jax.device_count())
  results = dict(device_kind=device.device_kind, platform=device.platform, devices=jax.device_count(),
                 jax_version=jax.__version__, host=f"{platform.node()} ({os.cpu_count()} CPU cores)",
                 dry_run=args.dry_run, peak_flops=peak, peak_source=source)
  c = make_config(args, dtype="bfloat16", dual_encoder=False)
  results["shapes"] = dict(max_frames=c.data.max_frames, clip_len=c.data.clip_len, max_query_len=c.data.max_query_len,
                           num_negatives=c.data.num_negatives, mlm_predictions=c.data.max_mlm_predictions,
                           video_dim=dims[0], subtitle_dim=dims[1], text_layers=c.model.text_layers,
                           video_layers=c.model.video_layers, **{k: c.model.bert[k] for k in (
                               "hidden_size", "num_heads", "intermediate_size", "vocab_size")})
  print(f"device {device.device_kind} ({device.platform}) x {jax.device_count()}, JAX {jax.__version__}; peak "
        f"{peak / 1e12:.1f} TFLOP/s ({source})", flush=True)

  def write():
    results["total_s"] = time.perf_counter() - t_start
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)

  check_training(args, results, dims, peak)
  write()
  check_retrieval(args, results, dims, peak, write)
  write()
  print(f"total {results['total_s']:.0f} s" + (f"; wrote {args.out}" if args.out else ""), flush=True)
  return results


if __name__ == "__main__":
  main()
