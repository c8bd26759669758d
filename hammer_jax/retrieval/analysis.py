"""The paper's analyses: metrics per video-duration bucket (Figures 2, 3) and timelines (Figure 5).

* `duration_buckets`: queries grouped by their video's duration into equal-count
  buckets; per bucket the VR median rank (Figure 2, lower is better) and the TL
  mIoU of the greedy moment in the ground-truth video (Figure 3).
* timelines: for a few queries, the ground truth against HAMMER's moment, the
  frame level alone and the clip level alone (Figure 5).

Written as a markdown table and PNG plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hammer_jax import files
from hammer_jax.data import prepared_data
from hammer_jax.retrieval import metrics


def duration_buckets(result, queries: prepared_data.QueryTable, num_buckets: int = 5) -> list[dict[str, Any]]:
  """Per equal-count duration bucket: range, count, VR median rank, TL mIoU."""
  rows = result.query_rows
  duration = queries.duration[rows]
  gt = np.stack([queries.st[rows], queries.ed[rows]], -1)
  iou = metrics.temporal_iou(result.greedy_gt, gt)
  edges = np.quantile(duration, np.linspace(0, 1, num_buckets + 1))
  out = []
  for b in range(num_buckets):
    lo, hi = edges[b], edges[b + 1]
    sel = (duration >= lo) & ((duration < hi) if b < num_buckets - 1 else (duration <= hi))
    if not sel.any():
      continue
    out.append({"duration_from": float(lo), "duration_to": float(hi), "queries": int(sel.sum()),
                "vr_median_rank": float(np.median(result.gt_rank[sel])),
                "tl_miou": float(100 * np.mean(iou[sel]))})
  return out


def buckets_table(buckets: list[dict[str, Any]]) -> str:
  lines = ["| video duration (s) | queries | VR median rank | TL mIoU |", "|---|---|---|---|"]
  for b in buckets:
    lines.append(f"| {b['duration_from']:.1f}-{b['duration_to']:.1f} | {b['queries']} | "
                 f"{b['vr_median_rank']:.1f} | {b['tl_miou']:.2f} |")
  return "\n".join(lines)


def plot_buckets(buckets: list[dict[str, Any]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = [f"{b['duration_from']:.0f}-{b['duration_to']:.0f}s" for b in buckets]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  axes[0].bar(labels, [b["vr_median_rank"] for b in buckets], color="#4c72b0")
  axes[0].set_title("VR median rank by video duration (lower is better)")
  axes[1].bar(labels, [b["tl_miou"] for b in buckets], color="#55a868")
  axes[1].set_title("TL mIoU by video duration (higher is better)")
  for ax in axes:
    ax.tick_params(axis="x", labelrotation=30)
  fig.tight_layout()
  files.atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
  plt.close(fig)


def plot_timelines(result, queries: prepared_data.QueryTable, path: str, num: int = 4) -> None:
  """Figure 5: ground truth vs HAMMER vs frame level alone vs clip level alone."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = min(num, len(result.query_rows))
  fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 * n + 0.4), squeeze=False)
  tracks = [("ground truth", None, "#333333"), ("HAMMER", result.greedy_gt, "#c44e52"),
            ("frame level", result.frame_only_gt, "#4c72b0"), ("clip level", result.clip_only_gt, "#55a868")]
  for i in range(n):
    ax = axes[i, 0]
    row = result.query_rows[i]
    dur = float(queries.duration[row])
    for y, (name, spans, color) in enumerate(tracks):
      st, ed = (queries.st[row], queries.ed[row]) if spans is None else spans[i]
      ax.barh(len(tracks) - 1 - y, max(float(ed - st), dur / 200), left=float(st), color=color, height=0.6)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([t[0] for t in reversed(tracks)], fontsize=8)
    ax.set_xlim(0, dur)
    desc = queries.desc[row]
    ax.set_title(f"{queries.vid_name[row]}: {desc[:90]}", fontsize=9)
  axes[-1, 0].set_xlabel("seconds")
  fig.tight_layout()
  files.atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
  plt.close(fig)


def write_analyses(out_dir: str, result, queries: prepared_data.QueryTable, data, split: str) -> None:
  """duration_buckets.md/.png and timelines.png into `out_dir`."""
  buckets = duration_buckets(result, queries)
  files.atomic_write(os.path.join(out_dir, "duration_buckets.md"),
                     f"Split {split} of {data.path}\n\n" + buckets_table(buckets) + "\n")
  plot_buckets(buckets, os.path.join(out_dir, "duration_buckets.png"))
  plot_timelines(result, queries, os.path.join(out_dir, "timelines.png"))
