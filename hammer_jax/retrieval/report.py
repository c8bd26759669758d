"""What a run prints after its final evaluation: recalls beside the corpus's chance levels, and where things are."""

from __future__ import annotations

import json
import os
from typing import Any

from hammer_jax import files

KS = (1, 5, 10, 100)


def chance_levels(data_path: str, split: str = "val") -> dict[str, Any] | None:
  """A synthetic corpus's chance levels (`chance.json` beside its prepared folder), or None for other data."""
  path = os.path.join(os.path.dirname(files.absolute(data_path).rstrip("/")), "raw", "chance.json")
  if not files.exists(path):
    return None
  return json.loads(files.read_text(path)).get(split)


def summary_table(results: dict[str, Any], chance: dict[str, Any] | None, top_k: int = 100) -> str:
  """Markdown: VR and VCMR (IoU 0.5 / 0.7) R@k, model vs chance, and VR median rank.

  Columns stop at R@top_k: VCMR lists hold one moment in each of the top_k videos,
  so a larger k would repeat R@top_k beside a chance level over the whole corpus.
  """
  ks = [k for k in KS if k <= top_k]
  rows = [("VR", lambda k: results["VR"][f"r{k}"], lambda k: chance["VR"][f"R@{k}"])]
  for iou in ("0.5", "0.7"):
    rows.append((f"VCMR IoU>={iou}", lambda k, i=iou: results["VCMR"][f"{i}-r{k}"],
                 lambda k, i=iou: chance["VCMR"][f"IoU={i}"][f"R@{k}"]))
  lines = ["| metric | " + " | ".join(f"R@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
  for name, model, rand in rows:
    lines.append(f"| {name} (model) | " + " | ".join(f"{model(k):.2f}" for k in ks) + " |")
    if chance:
      lines.append(f"| {name} (chance) | " + " | ".join(f"{rand(k):.2f}" for k in ks) + " |")
  lines.append(f"\nVR median rank: {results['VR']['median_rank']:.1f}"
               + (" (chance: about half the corpus)" if chance else "")
               + f"; TL mIoU {results['TL']['mIoU']:.2f}"
               + (f" (chance {chance['TL_mIoU']:.2f})" if chance else ""))
  return "\n".join(lines)


def final_summary(workdir: str, data, split: str, step: int, results: dict[str, Any], eval_dir: str,
                  top_k: int = 100) -> str:
  """The text printed after training's final evaluation (the demo's closing table)."""
  table = summary_table(results, chance_levels(data.path, split), top_k)
  return (f"\nHAMMER after {step} steps, {split} split of {data.path}:\n\n{table}\n\n"
          f"{where_things_are(workdir, eval_dir)}")


def where_things_are(workdir: str, eval_dir: str) -> str:
  return "\n".join([
      f"Checkpoints:  {os.path.join(workdir, 'checkpoints')}",
      f"TensorBoard:  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
      f"Predictions:  {os.path.join(eval_dir, 'predictions.json')} (TVR submission layout)",
      f"Metrics:      {os.path.join(eval_dir, 'metrics.md')}",
      f"Plots:        {os.path.join(eval_dir, 'timelines.png')}, {os.path.join(eval_dir, 'duration_buckets.png')}",
      f"Search:       python -m hammer_jax.search --workdir={workdir} --query \"the dog runs in the kitchen\"",
  ])
