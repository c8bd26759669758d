"""Does HAMMER learn real query language? Real TVR / ActivityNet queries, a linear reference, one run.

The corpus (`data_prep.real_text_corpus`): real queries, durations, moments and
query types from the annotation file named by --annotations (e.g.
`../shared/data/tvr/tvr_val_release.jsonl`), over features in which every
content word leaves a fixed trace in its moment's rows. It is prepared with
`data_prep.tvr` / `data_prep.activitynet` like real data. In the same run:

  * chance (exact formulas, `chance.json`);
  * the linear reference (`benchmarks/linear_reference.py`): ridge regression from
    a bag of words to the moment's mean feature, closed form, same frames;
  * HAMMER per `--runs` item x `--seeds`: `paper` (configs/tvr.py or
    configs/activitynet.py) and `recommended` (their `:recommended` variant),
    each at CPU-budget shapes (`cpu_budget`: 64 frames, batch 8, `--steps`), or
    any variant string of the config file (e.g. `recommended,objectives=vr+tl`; runs are
    separated by `;`)
    with `--set key=value` overrides for experiments;

then VR R@1/R@10, VCMR/SVMR R@1/R@10 at IoU 0.5/0.7, TL mIoU and first-stage
recall@10, mean +- std over seeds, and a learning curve (val VR R@1 and VCMR
R@1 every `--curve_every` steps) per run.

  python benchmarks/real_language_benchmark.py --out_dir=/tmp/real_tvr \
      --annotations=../shared/data/tvr/tvr_val_release.jsonl --runs="paper;recommended" --seeds=0,1,2

Writes `results.json` and `table.md` into --out_dir; re-running reuses the
corpus, the prepared data and finished runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

HEADLINE = (("VR", "r1"), ("VR", "r10"), ("VCMR", "0.5-r1"), ("VCMR", "0.5-r10"), ("VCMR", "0.7-r1"),
            ("SVMR", "0.5-r1"), ("SVMR", "0.5-r10"), ("SVMR", "0.7-r1"), ("TL", "mIoU"), ("first_stage", "recall@10"))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--annotations", required=True, help="TVR release jsonl or ActivityNet Captions json")
  p.add_argument("--source", default="tvr", choices=("tvr", "activitynet"))
  p.add_argument("--num_videos", type=int, default=400)
  p.add_argument("--runs", default="paper;recommended",
                 help="';'-separated; 'paper' or a variant string of the config file (e.g. recommended,no_cross_modal)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--max_frames", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--curve_every", type=int, default=200, help="learning-curve evaluation every N steps (0: none)")
  p.add_argument("--curve_queries", type=int, default=100, help="val queries of each learning-curve point")
  p.add_argument("--set", action="append", default=[], help="config override key=value (experiments)")
  p.add_argument("--tag", default="", help="suffix of the run folders (runs with other --set values)")
  p.add_argument("--corpus_seed", type=int, default=0)
  return p.parse_args(argv)


def cpu_budget(c, args):
  """The shapes of a run of minutes on a 2-core CPU (the rest is the config's)."""
  c.data.max_frames = args.max_frames
  c.data.clip_len = min(c.data.clip_len, args.max_frames // 4)  # at least 4 clips (ActivityNet's 32 at 64 frames)
  c.optim.batch_size = args.batch_size
  c.optim.num_steps = args.steps
  c.eval.batch_size = 32
  c.eval.top_k_videos = 10   # videos localised per query: VCMR R@1/R@10 need no more (100 would cost 10x)
  c.eval.every_steps = args.curve_every          # the learning curve: on the first `curve_queries` val queries
  c.eval.max_queries_during_training = args.curve_queries
  c.eval.val_loss_batches = 1
  c.eval.final_eval = True                       # the whole val split (W/eval/<split>_step<N>/metrics.json)
  c.log_every_steps = 50
  c.log_objective_grad_norms = False
  c.checkpoint_every_steps = args.steps
  for item in args.set:
    key, _, value = item.partition("=")
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    if value in ("none", "None", "null"):
      node[leaf] = None
    elif isinstance(node[leaf], str) or node[leaf] is None:
      node[leaf] = value
    else:
      node[leaf] = type(node[leaf])(json.loads(value))
  return c


def run_config(run: str, args, prepared_dir: str, seed: int):
  from configs import activitynet, tvr
  module = tvr if args.source == "tvr" else activitynet
  c = module.get_config("" if run == "paper" else run)
  c.data.prepared_dir = prepared_dir
  c.seed = seed
  return cpu_budget(c, args)


def curve(scalars: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
  """The learning-curve points of a run's TensorBoard scalars (`read_scalars`)."""
  return {k: {int(step): v for step, v in scalars.get(f"eval/{k}", {}).items()}
          for k in ("VR/r1", "VR/r10", "VCMR/0.5-r1", "TL/mIoU", "first_stage/recall@10")}


def train_run(run: str, seed: int, args, prepared_dir: str) -> dict:
  from hammer_jax.train import loop
  run_dir = os.path.join(args.out_dir, "runs", f"{run}{args.tag}_seed{seed}")
  done = os.path.join(run_dir, "result.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  config = run_config(run, args, prepared_dir, seed)
  t0 = time.time()
  loop.train_and_evaluate(config, run_dir)
  seconds = time.time() - t0
  from benchmarks.vr_dynamics import read_scalars
  from hammer_jax import workdir as workdirs
  with open(os.path.join(workdirs.eval_dir(run_dir, config.data.eval_split, args.steps), "metrics.json"),
            encoding="utf-8") as f:
    final = json.load(f)
  metrics = {f"{t}/{k}": final.get(t, {}).get(k) for t, k in HEADLINE}
  scalars = read_scalars(run_dir)
  vr_loss = [v for s, v in scalars.get("vr", {}).items() if s > args.steps - 100]
  out = {"run": run, "seed": seed, "seconds": round(seconds, 1), "metrics": metrics, "curve": curve(scalars),
         "vr_loss_last100_over_ln": (sum(vr_loss) / len(vr_loss) / math.log(1 + config.data.num_negatives)
                                     if vr_loss else None)}
  os.makedirs(run_dir, exist_ok=True)
  with open(done, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  return out


def summarise(values):
  import numpy as np
  v = [x for x in values if x is not None]
  return (float(np.mean(v)), float(np.std(v))) if v else (None, None)


def table(results: dict) -> str:
  head = "| run | " + " | ".join(f"{t} {k}" for t, k in HEADLINE) + " |"
  lines = [head, "|" + "---|" * (len(HEADLINE) + 1)]
  chance = results["chance"]
  lines.append("| chance | " + " | ".join(_fmt(chance.get(f"{t}/{k}")) for t, k in HEADLINE) + " |")
  ref = results["reference"]
  lines.append("| linear reference | " + " | ".join(_fmt(ref.get(f"{t}/{k}")) for t, k in HEADLINE) + " |")
  for run, rows in results["hammer"].items():
    cells = [summarise([r["metrics"].get(f"{t}/{k}") for r in rows]) for t, k in HEADLINE]
    lines.append(f"| HAMMER `{run}` ({len(rows)} seeds) | " +
                 " | ".join("-" if m is None else f"{m:.1f} ± {s:.1f}" for m, s in cells) + " |")
  return "\n".join(lines)


def _fmt(v):
  return "-" if v is None else f"{v:.2f}"


def main(argv=None):
  args = parse_args(argv)
  from benchmarks import linear_reference
  from data_prep import activitynet as anet_prep
  from data_prep import real_text_corpus, tvr as tvr_prep
  from hammer_jax import logs
  from hammer_jax.data import input_pipeline, prepared_data
  logs.quiet_library_logs()
  from absl import logging
  logging.set_verbosity(logging.INFO)  # the training loop's progress lines
  raw, prepared = os.path.join(args.out_dir, "raw"), os.path.join(args.out_dir, "prepared")
  summary = real_text_corpus.make_real_text_corpus(raw, annotations=args.annotations, source=args.source,
                                                   num_videos=args.num_videos, seed=args.corpus_seed)
  if args.source == "tvr":
    tvr_prep.prepare_tvr(prepared, annotation_dir=raw, video_feature=[os.path.join(raw, "video_feature.h5")],
                         subtitle_feature=os.path.join(raw, "sub_feature.h5"),
                         video2dur_idx=os.path.join(raw, "tvr_video2dur_idx.json"), videos_per_shard=64)
  else:
    anet_prep.prepare_activitynet(prepared, split_files={"train": os.path.join(raw, "train.json"),
                                                         "val_1": os.path.join(raw, "val_1.json")},
                                  video_feature=os.path.join(raw, "video_feature.h5"), max_frames=args.max_frames,
                                  videos_per_shard=64)
  data = prepared_data.open_prepared(prepared)
  config = run_config("paper", args, prepared, 0)
  spec = input_pipeline.PipelineSpec.from_config(config.data)
  t0 = time.time()
  ref = linear_reference.evaluate(data, spec, train_split=config.data.train_split,
                                  eval_split=config.data.eval_split)
  ref_flat = {f"{t}/{k}": ref[t][k] for t, k in HEADLINE if t in ref}
  ref_flat["first_stage/recall@10"] = ref["VR"]["r10"]  # the reference is its own first stage
  c = summary["chance"]["val"]
  chance = {"VR/r1": c["VR"]["R@1"], "VR/r10": c["VR"]["R@10"], "VCMR/0.5-r1": c["VCMR"]["IoU=0.5"]["R@1"],
            "VCMR/0.5-r10": c["VCMR"]["IoU=0.5"]["R@10"], "VCMR/0.7-r1": c["VCMR"]["IoU=0.7"]["R@1"],
            "SVMR/0.5-r1": c["SVMR"]["IoU=0.5"]["R@1"], "SVMR/0.5-r10": c["SVMR"]["IoU=0.5"]["R@10"],
            "SVMR/0.7-r1": c["SVMR"]["IoU=0.7"]["R@1"], "TL/mIoU": c["TL_mIoU"],
            "first_stage/recall@10": c["VR"]["R@10"]}
  results = {"args": vars(args), "corpus": summary["splits"], "chance": chance,
             "reference": dict(ref_flat, seconds=round(time.time() - t0, 1), ridge_lambda=ref["lambda"]),
             "hammer": {}}
  print("reference:", json.dumps(results["reference"]))
  for run in filter(None, args.runs.split(";")):
    for seed in (int(s) for s in args.seeds.split(",")):
      r = train_run(run, seed, args, prepared)
      results["hammer"].setdefault(run, []).append(r)
      print(run, seed, json.dumps(r["metrics"]), "seconds", r["seconds"], flush=True)
      with open(os.path.join(args.out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
  text = table(results)
  with open(os.path.join(args.out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
