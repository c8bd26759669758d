"""Training dynamics of video retrieval: which settings let the VR head learn, and where it collapses.

Trains the MiniLM demo (`configs/demo.py`, 300/30 synthetic videos) once per
variant below with the real training loop (`train.train_and_evaluate`), then
reads back what the loop logged to TensorBoard (VR loss, VR score spread,
per-objective gradient norms into the shared parameters) and measures on the
val split:

  * VR R@1 / R@10 / median rank over the 30 val videos and the per-query spread
    of f(v, h) over the corpus (std across videos, mean over queries);
  * where the video dependence goes: for 3 val queries against 8 val videos, the
    spread across videos (norm of the std over videos / mean norm) of each layer
    output on the path to the VR score (Flax `capture_intermediates`), at
    initialisation and after training.

  python benchmarks/vr_dynamics.py --out_dir=/tmp/vr_dynamics [--variants=old_demo,demo] [--steps=600]

Writes `results.json`, `table.md` and `vr_dynamics.png` into --out_dir
(docs/training_dynamics.md shows them). About 4 minutes per variant on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

# name -> (what it tests, config overrides on configs/demo.py)
VARIANTS = {
    "old_demo": ("the earlier demo rates: 3e-4, x3 on new layers", {"optim.lr": 3e-4, "optim.new_layer_lr_multiplier": 3.0,
                                                                   "loss.use_dual_encoder": False}),
    "lr3e-4": ("one rate 3e-4", {"optim.lr": 3e-4, "loss.use_dual_encoder": False}),
    "lr2e-4": ("one rate 2e-4 (the paper's TVR rate)", {"optim.lr": 2e-4, "loss.use_dual_encoder": False}),
    "lr1e-4": ("one rate 1e-4", {"loss.use_dual_encoder": False}),
    "new_x9": ("text 1e-4, new layers 9e-4", {"optim.new_layer_lr_multiplier": 9.0, "loss.use_dual_encoder": False}),
    "vr_only": ("1e-4, VR loss alone", {"loss.use_tl": False, "loss.use_frame_mlm": False, "loss.use_clip_mlm": False,
                                        "loss.use_dual_encoder": False}),
    "frame_mean": ("1e-4, frame B/E/O loss averaged (loss balance)", {"loss.frame_loss_reduction": "mean",
                                                                     "loss.use_dual_encoder": False}),
    "negatives7": ("1e-4, 7 negatives (every other video of the batch)", {"data.num_negatives": 7,
                                                                          "loss.use_dual_encoder": False}),
    "init0.02": ("1e-4, new layers initialised N(0, 0.02)", {"model.new_layer_init_std": 0.02,
                                                             "loss.use_dual_encoder": False}),
    "demo": ("1e-4 + dual-encoder loss (configs/demo.py)", {}),
}
PROBE_QUERIES, PROBE_VIDEOS = 3, 8


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def make_config(overrides: dict, steps: int, seed: int, prepared_dir: str):
  from configs import demo
  c = demo.get_config()
  c.data.prepared_dir = prepared_dir
  c.optim.num_steps = steps
  c.seed = seed
  c.eval.final_eval = False
  c.checkpoint_every_steps = steps
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def read_scalars(run_dir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar a run wrote to TensorBoard."""
  import tensorflow as tf
  out: dict[str, dict[int, float]] = {}
  for path in glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*")):
    for raw in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      for v in event.summary.value:
        value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
        if getattr(value, "ndim", 0) == 0:  # scalars only (not the hparams summary)
          out.setdefault(v.tag, {})[event.step] = float(value)
  return out


def spread(x) -> float:
  """Norm of the std over the leading (video) axis / mean norm of one video's values."""
  import numpy as np
  x = np.asarray(x, np.float64).reshape(PROBE_VIDEOS, -1)
  return float(np.linalg.norm(x.std(0)) / max(np.linalg.norm(x, axis=1).mean(), 1e-12))


# Layer outputs on the path to f(v, h), in order: (label, capture path, method).
SITES = (
    ("frame input (Dense + pos + LN)", "frame_input_visual", "video"),
    ("frame video branch", "frame_encoder/video_branch_visual", "video"),
    ("frame cross-modal (video side)", "frame_encoder/cross_modal_layer_visual", "pair"),
    ("clip input (phi_k)", "clip_input_visual", "pair"),
    ("clip video branch", "clip_encoder/video_branch_visual", "pair"),
    ("clip cross-modal (video side)", "clip_encoder/cross_modal_layer_visual", "pair"),
    ("VR head (per clip)", "vr_head", "pair"),
)


def layer_spreads(model, params, data, config) -> dict[str, float]:
  """Spread across PROBE_VIDEOS val videos of each SITES output, mean over PROBE_QUERIES queries."""
  import jax
  import numpy as np
  from hammer_jax.model import hammer
  from hammer_jax.data import input_pipeline, prepared_data
  spec = input_pipeline.PipelineSpec.from_config(config.data)
  vb = next(input_pipeline.eval_video_batches(data, config.data.eval_split, spec, PROBE_VIDEOS,
                                              process_index=0, process_count=1))
  queries = prepared_data.read_queries(data, config.data.eval_split)
  vparts, vstate = model.apply(params, vb["video"], vb.get("subtitle"), vb["frame_mask"],
                               method=hammer.Hammer.encode_video, capture_intermediates=True)
  results: dict[str, list[float]] = {}
  for qi in range(PROBE_QUERIES):
    ids = np.zeros((1, config.data.max_query_len), np.int32)
    tokens = queries.token_ids[qi][:config.data.max_query_len]
    ids[0, :len(tokens)] = tokens
    qparts = model.apply(params, ids, (ids != 0).astype(np.int32), method=hammer.Hammer.encode_query)
    qparts = jax.tree_util.tree_map(lambda x: np.repeat(x, PROBE_VIDEOS, 0), qparts)
    _, pstate = model.apply(params, qparts, vparts, retrieval_only=True, method=hammer.Hammer.score_pairs,
                            capture_intermediates=True)
    for label, path, which in SITES:
      node = (vstate if which == "video" else pstate)["intermediates"]
      for part in path.split("/"):
        node = node[part]
      value = node["__call__"][0]
      if isinstance(value, tuple):  # CoAttentionLayer: (text_out or None, video_out)
        value = value[1]
      results.setdefault(label, []).append(spread(value))
  return {k: float(np.mean(v)) for k, v in results.items()}


def val_retrieval(model, params, data, config) -> dict[str, float]:
  """VR over the whole val split: R@1, R@10, median rank (the pipeline's tie rule), per-query score spread."""
  import numpy as np
  from hammer_jax.data import input_pipeline
  from hammer_jax.retrieval import inference
  from hammer_jax.retrieval.evaluator import Evaluator
  from hammer_jax.retrieval.scorer import PairScorer
  scorer = PairScorer(model, batch_size=config.eval.batch_size)
  ev = Evaluator(scorer, config, data, config.data.eval_split, top_k=1)
  corpus = ev.encode_corpus(params)
  q_parts = scorer.encode_queries(params, input_pipeline.eval_query_batches(
      ev.queries.token_ids, config.data.max_query_len, scorer.batch_size, process_index=0, process_count=1))
  scores = scorer.vr_scores(params, q_parts, corpus)
  rank = inference.rank_of(scores, corpus.positions_of(ev.queries.video_index))
  return {"val_vr_r1": 100 * float(np.mean(rank <= 1)), "val_vr_r10": 100 * float(np.mean(rank <= 10)),
          "val_vr_median_rank": float(np.median(rank)), "val_score_spread": float(scores.std(1).mean()),
          "chance_r1": 100 / scores.shape[1], "chance_r10": 100 * min(10, scores.shape[1]) / scores.shape[1]}


def run_variant(name: str, overrides: dict, args, prepared_dir: str) -> dict:
  import jax
  import numpy as np
  from hammer_jax import restore
  from hammer_jax.model import build
  from hammer_jax.train import loop
  config = make_config(overrides, args.steps, args.seed, prepared_dir)
  run_dir = os.path.join(args.out_dir, "runs", name)
  t0 = time.time()
  loop.train_and_evaluate(config, run_dir)
  train_s = time.time() - t0
  config, data, model, params, _ = restore.restore(run_dir)
  scalars = read_scalars(run_dir)
  j = config.data.num_negatives
  vr = scalars.get("vr", {})
  last100 = [v for s, v in vr.items() if s > args.steps - 100]
  init = build.init_params(model, config, jax.random.key(config.seed), build.dummy_batch(
      config, data.video_dim, data.subtitle_dim, batch_size=1))
  out = {"name": name, "what": VARIANTS[name][0], "overrides": overrides, "train_seconds": round(train_s, 1),
         "ln_1_plus_j": math.log(1 + j), "vr_over_chance_last100": float(np.mean(last100)) / math.log(1 + j),
         "curves": {tag: sorted(vals.items()) for tag, vals in scalars.items()
                    if tag in ("vr", "vr_spread", "tl", "grad/vr/video", "grad/vr/cross_modal", "grad/tl/video")},
         "layer_spread_init": layer_spreads(model, init, data, config),
         "layer_spread_trained": layer_spreads(model, params, data, config)}
  out.update(val_retrieval(model, params, data, config))
  return out


def write_report(results: list[dict], out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lines = ["| variant | what | VR loss / ln(1+J), last 100 steps | batch VR spread, end | val VR R@1 | val VR R@10 "
           "| median rank | val score spread |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    end_spread = r["curves"]["vr_spread"][-1][1] if r["curves"].get("vr_spread") else float("nan")
    lines.append(f"| `{r['name']}` | {r['what']} | {r['vr_over_chance_last100']:.3f} | {end_spread:.4f} | "
                 f"{r['val_vr_r1']:.1f} | {r['val_vr_r10']:.1f} | {r['val_vr_median_rank']:.1f} | "
                 f"{r['val_score_spread']:.4f} |")
  chance = results[0]
  lines.append(f"\nChance on the {int(round(100 / chance['chance_r1']))} val videos: R@1 {chance['chance_r1']:.1f}, "
               f"R@10 {chance['chance_r10']:.1f}.\n")
  lines += ["| layer output | spread at init | " + " | ".join(f"`{r['name']}` trained" for r in results) + " |",
            "|---|---|" + "---|" * len(results)]
  for label, _, _ in SITES:
    lines.append(f"| {label} | {results[0]['layer_spread_init'][label]:.4f} | "
                 + " | ".join(f"{r['layer_spread_trained'][label]:.4f}" for r in results) + " |")
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for r in results:
    vr = r["curves"].get("vr", [])
    if vr:
      axes[0].plot([s for s, _ in vr], [v / r["ln_1_plus_j"] for _, v in vr], label=r["name"])
    sp = r["curves"].get("vr_spread", [])
    axes[1].plot([s for s, _ in sp], [v for _, v in sp], label=r["name"])
    g = r["curves"].get("grad/vr/video", [])
    axes[2].semilogy([s for s, _ in g], [max(v, 1e-6) for _, v in g], label=r["name"])
  axes[0].set(title="VR loss / ln(1+J)  (1 = chance)", xlabel="step")
  axes[1].set(title="VR score spread over each query's candidates", xlabel="step")
  axes[2].set(title="|grad| the VR loss sends into the video layers", xlabel="step")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "vr_dynamics.png"), dpi=90)


def main(argv=None):
  args = parse_args(argv)
  from data_prep import demo_corpus
  from hammer_jax import logs
  logs.quiet_library_logs()
  os.makedirs(args.out_dir, exist_ok=True)
  from configs import demo
  c = demo.get_config()
  data = demo_corpus.ensure_synthetic_prepared(os.path.join(args.out_dir, "data"), synthetic=dict(c.data.synthetic),
                                             text_checkpoint=c.model.text_checkpoint, verbose=False)
  path = os.path.join(args.out_dir, "results.json")
  done = {r["name"]: r for r in json.load(open(path))} if os.path.exists(path) else {}
  for name in args.variants.split(","):
    if name not in VARIANTS:
      sys.exit(f"error: unknown variant {name!r}; choose from {list(VARIANTS)}")
    if name not in done:  # Resumable: finished variants are kept.
      print(f"== {name}: {VARIANTS[name][0]}", flush=True)
      done[name] = run_variant(name, VARIANTS[name][1], args, data.path)
      with open(path + ".tmp", "w") as f:
        json.dump(list(done.values()), f, indent=1)
      os.replace(path + ".tmp", path)
      r = done[name]
      print(f"   VR loss/ln(1+J) {r['vr_over_chance_last100']:.3f}  val R@1 {r['val_vr_r1']:.1f} "
            f"R@10 {r['val_vr_r10']:.1f}  ({r['train_seconds']:.0f} s)", flush=True)
  write_report([done[n] for n in args.variants.split(",")], args.out_dir)
  print(open(os.path.join(args.out_dir, "table.md")).read())


if __name__ == "__main__":
  main()
