"""Exact chance levels of a synthetic split, and the byte-stable h5 files its features are written to.

Chance levels (`chance.json`, percent) are what a predictor that ignores the input
scores, computed with exact formulas (no sampling): VR R@k = min(k, N) / N for N
videos; a random moment is a uniformly random frame pair start <= end decoded to
seconds ([s * 1.5, min((e + 1) * 1.5, duration)]), so for query q with fraction
p_q(theta) of such pairs reaching IoU >= theta: SVMR R@k = mean_q 1 - (1 - p_q)^k (k
independent draws in the right video), VCMR R@k = mean_q min(k, N) / N * p_q (one
random moment per video of a random ranking), TL mIoU = mean_q mean IoU over pairs.
A trained model must beat these clearly; equal numbers mean it learned nothing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

FRAME_SECONDS = 1.5  # One feature row per 1.5 s, as in TVR.
IOUS = (0.5, 0.7)
KS = (1, 5, 10, 100)


def chance_levels(queries: list[dict], n_videos: int) -> dict[str, Any]:
  """Exact chance levels (percent) of one split's queries ({"duration", "ts"}) among `n_videos`."""
  p = {iou: [] for iou in IOUS + (0.3,)}
  mious = []
  for q in queries:
    n = math.ceil(q["duration"] / FRAME_SECONDS)
    s, e = np.triu_indices(n)  # Every frame pair with s <= e, equally likely.
    ps, pe = s * FRAME_SECONDS, np.minimum((e + 1) * FRAME_SECONDS, q["duration"])
    st, ed = q["ts"]
    inter = np.clip(np.minimum(pe, ed) - np.maximum(ps, st), 0, None)
    iou = inter / (np.maximum(pe, ed) - np.minimum(ps, st))
    for t in p:
      p[t].append(float(np.mean(iou >= t)))
    mious.append(float(np.mean(iou)))
  vr = {f"R@{k}": 100.0 * min(k, n_videos) / n_videos for k in KS}
  svmr, vcmr = {}, {}
  for t in IOUS:
    pt = np.asarray(p[t])
    svmr[f"IoU={t}"] = {f"R@{k}": 100.0 * float(np.mean(1 - (1 - pt) ** k)) for k in KS}
    vcmr[f"IoU={t}"] = {f"R@{k}": float(np.mean(pt)) * vr[f"R@{k}"] for k in KS}
  return {"VR": vr, "SVMR": svmr, "VCMR": vcmr, "TL_mIoU": 100.0 * float(np.mean(mious)),
          "TL_R@1": {f"IoU={t}": 100.0 * float(np.mean(p[t])) for t in (0.3,) + IOUS},
          "num_videos": n_videos, "num_queries": len(queries), "method": "exact formula"}


def format_chance_levels(split: str, c: dict[str, Any]) -> str:
  """The lines of one split's `chance_levels` for a summary."""
  fmt = lambda d: " ".join(f"{k} {v:.2f}" for k, v in d.items())
  lines = [f"chance levels, {split} ({c['num_videos']} videos, {c['method']}), percent:",
           f"  VR            {fmt(c['VR'])}"]
  for task in ("SVMR", "VCMR"):
    lines += [f"  {task} {iou}  {fmt(r)}" for iou, r in c[task].items()]
  lines.append(f"  TL mIoU {c['TL_mIoU']:.2f}   TL {fmt(c['TL_R@1'])}")
  return "\n".join(lines)


def h5_writer(arrays: dict[str, np.ndarray]) -> Callable[[str], None]:
  """`write(path)` of an h5 file of `arrays` (name -> array) whose bytes depend on the arrays only."""
  def write(tmp: str) -> None:
    import h5py  # Deferred: only needed when writing.
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
      for key in sorted(arrays):  # track_times=False: no timestamps -> identical bytes.
        f.create_dataset(key, data=arrays[key], track_times=False)
  return write
