"""One evaluation of a split: retrieval -> TVR submission -> metrics -> files.

Shared by the eval binary (`hammer_jax/eval.py`, the whole split) and training
(`train_and_evaluate(evaluate_fn=...)`, a slice of the split every
`config.eval.every_steps`). The prediction file is in the TVR submission layout
and the metrics are computed from that file's content (`metrics.py` follows the
TVR standalone evaluation), so handing the file to the official evaluation gives
the numbers printed here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from hammer_jax import analysis, metrics, predictions, prepared_data, retrieval
from hammer_jax.evaluator import Evaluator


def official_video_ids(data: prepared_data.PreparedData, split: str) -> tuple[dict[str, int], np.ndarray]:
  """(video2idx {vid_name: official idx}, official idx of each split position)."""
  names = data.split(split)["video_names"]
  video2idx = {str(k): int(v) for k, v in data.manifest["video2idx"][split].items()}
  return video2idx, np.array([video2idx[n] for n in names], np.int64)


def build_submission(result: retrieval.Retrieval, queries: prepared_data.QueryTable, position_to_idx: np.ndarray,
                     video2idx: dict[str, int], with_ground_truth: bool) -> dict[str, Any]:
  """The TVR submission (`video2idx`, `VCMR`, `SVMR` when the ground truth is known, `VR`)."""
  vcmr, svmr, vr = [], [], []
  for i, row in enumerate(result.query_rows):
    desc_id, desc = int(queries.desc_id[row]), queries.desc[row]
    m = result.vcmr[i]
    vcmr.append(predictions.make_entry(desc_id, desc, position_to_idx[m[:, 0].astype(np.int64)], m[:, 1], m[:, 2],
                                       m[:, 3]))
    vr.append(predictions.make_vr_entry(desc_id, desc, position_to_idx[result.vr_rank_video[i]],
                                        result.vr_score[i]))
    if with_ground_truth:
      s = result.svmr[i]
      gt = position_to_idx[int(queries.video_index[row])]
      svmr.append(predictions.make_entry(desc_id, desc, np.full(len(s), gt), s[:, 0], s[:, 1], s[:, 2]))
  return predictions.make_submission(video2idx, vcmr=vcmr, svmr=svmr if with_ground_truth else None, vr=vr)


def evaluate_split(evaluator: Evaluator, params, *, top_k: int, max_queries: int | None = None,
                   out_dir: str | None = None, with_analyses: bool = False) -> dict[str, Any]:
  """Evaluates `evaluator.split`; returns the metrics dict ({} without ground truth).

  Writes to `out_dir` (process 0): predictions.json, and with ground truth
  metrics.json and metrics.md (plus the duration-bucket and timeline analyses
  when `with_analyses`).
  """
  data, split = evaluator.data, evaluator.split
  queries = evaluator.queries
  has_gt = bool(data.split(split)["has_ground_truth"])
  rows = np.arange(len(queries) if max_queries is None else min(max_queries, len(queries)))
  result = retrieval.retrieve(evaluator, params, queries, top_k=top_k, query_rows=rows, with_ground_truth=has_gt)
  video2idx, position_to_idx = official_video_ids(data, split)
  submission = build_submission(result, queries, position_to_idx, video2idx, has_gt)
  predictions.validate_submission(submission)
  out: dict[str, Any] = {}
  if has_gt:
    wanted = set(queries.desc_id[rows].tolist())
    gt = [r for r in metrics.ground_truth_records(queries) if r["desc_id"] in wanted]
    out = dict(metrics.evaluate_predictions(submission, gt))
    gt_spans = np.stack([queries.st[rows], queries.ed[rows]], -1)
    out["TL"] = dict(metrics.tl_metrics(result.greedy_gt, gt_spans))
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    predictions.write_submission(os.path.join(out_dir, "predictions.json"), submission, validated=True)
    if has_gt:
      _write_text(os.path.join(out_dir, "metrics.json"), json.dumps(out, indent=1))
      _write_text(os.path.join(out_dir, "metrics.md"), metrics.format_table(out) + "\n")
      if with_analyses:
        analysis.write_analyses(out_dir, result, queries, data, split)
  return out


def flat_scalars(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
  """{"eval/VCMR/0.5-r1": 1.2, ...}: the numeric leaves, for TensorBoard."""
  out = {}
  for task, values in results.items():
    if isinstance(values, dict):
      for k, v in values.items():
        if isinstance(v, (int, float)) and np.isfinite(v):
          out[f"{prefix}/{task}/{k}"] = float(v)
  return out


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
