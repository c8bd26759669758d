"""Evaluation metrics, computed as the TVR standalone evaluation computes them.

Reference: github jayleicn/TVRetrieval, `standalone_eval/eval.py` (`eval_retrieval`,
`eval_by_task_type`, `compute_temporal_iou_batch`). Conventions followed here:

- IoU: `max(0, min(ed) - max(st)) / (max(ed) - min(st))`, 0 where the union is 0,
  in float32 (the reference casts predictions and ground truth to float32 and
  compares with the threshold in float32). A prediction is correct when its video
  is the ground-truth video AND `IoU >= threshold` (>=, not >).
- Each query's predictions are taken in the order given (the reference never
  re-sorts by score; ties therefore keep the given order) and truncated to the
  first 100. Nothing is deduplicated.
- VCMR R@K: the query counts when one of its first K predictions is correct.
- SVMR R@K: predictions in another video are dropped FIRST, then the first K of
  the remaining ones are checked (so K counts predictions in the right video).
- VR R@K: the query counts when its video is among its first K predictions.
- Every number is a percentage rounded to 2 decimals with numpy's rounding
  (`round(np.float64(x) * 100, 2)`, as the reference).
- Per-type breakdown (TVR types v / t / vt): `"{type}-{key}"` = hits of that type
  divided by the number of queries of that type (NaN when a type has none, as the
  reference's 0/0), plus `"desc_type_ratio"`.
- A ground-truth query missing from the predictions (or a prediction without
  ground truth) is an error (`match_number=True`); with `match_number=False` such
  queries are left out of the denominators.

Additions of ours (not in the reference), for the paper's section 4.1 metrics:
- VR median rank (`"median_rank"`): the 1-based position of the first prediction
  naming the right video; a query whose video is absent from its (truncated)
  list gets `len(list) + 1` (a lower bound of its true rank, so the median is
  exact as long as more than half of the queries find their video). Median as
  numpy.median (mean of the two middle ranks for an even count). Not rounded.
- TL (single video localisation): mIoU and R@1 at IoU {0.3, 0.5, 0.7}, percent.
- A query with no predictions is a miss (the reference crashes on one).
- Thresholds must be > 0: the reference zeroes the IoU of wrong-video predictions
  and compares with `>=`, which would let them count at a threshold of 0.
- Only single-span ground truth (`ts = [st, ed]`) is supported; the reference's
  DiDeMo branch (>= 4 spans, correct when overlapping 2) is not.

Array layout of the functions below: `predictions` is a sequence of Q arrays
`[n_q, >=3]` with columns (video index, st, ed[, score]) in ranked order, aligned
row by row with a `GroundTruth` of Q queries.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

# The submission layout's tasks and 100-prediction cap are defined once, in predictions.py.
from hammer_jax.retrieval.predictions import MAX_PREDICTIONS as MAX_PRED_PER_QUERY
from hammer_jax.retrieval.predictions import TASKS as TASK_TYPES

DESC_TYPES = ("v", "t", "vt")
RECALL_KS = (1, 5, 10, 100)
IOU_THDS = (0.5, 0.7)
TL_IOU_THDS = (0.3, 0.5, 0.7)


def rounded_percentage(fraction) -> float:
  """`fraction` * 100 rounded to 2 decimals, with numpy's rounding as the reference."""
  return float(round(np.float64(fraction) * 100, 2))


def temporal_iou(pred, gt) -> np.ndarray:
  """Temporal IoU of spans, elementwise (broadcasting).

  Args:
    pred: [N, 2] (or [..., 2]) [st, ed] seconds.
    gt: [N, 2] (or broadcastable to pred).
  Returns:
    float32 [N] (or [...]); 0 where the union is 0.
  """
  pred = np.asarray(pred, np.float32)
  gt = np.asarray(gt, np.float32)
  inter = np.maximum(0, np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0]))
  # The reference's "union" is the hull; it equals the true union whenever the
  # spans overlap, and the IoU is 0 anyway when they do not.
  union = np.maximum(pred[..., 1], gt[..., 1]) - np.minimum(pred[..., 0], gt[..., 0])
  return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def pairwise_temporal_iou(pred, gt) -> np.ndarray:
  """IoU of every pair: pred [N, 2], gt [M, 2] -> float32 [N, M]."""
  pred = np.asarray(pred, np.float32).reshape(-1, 2)
  gt = np.asarray(gt, np.float32).reshape(-1, 2)
  return temporal_iou(pred[:, None, :], gt[None, :, :])


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """Ground truth of Q queries.

  desc_id: int64 [Q]; video_index: int64 [Q] (index in the submission's video2idx);
  spans: float32 [Q, 2] [st, ed] seconds; types: Q strings ("v"/"t"/"vt") or None.
  """
  desc_id: np.ndarray
  video_index: np.ndarray
  spans: np.ndarray
  types: tuple[str, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, "desc_id", np.asarray(self.desc_id, np.int64).reshape(-1))
    object.__setattr__(self, "video_index", np.asarray(self.video_index, np.int64).reshape(-1))
    object.__setattr__(self, "spans", np.asarray(self.spans, np.float32).reshape(-1, 2))
    q = len(self.desc_id)
    if len(self.video_index) != q or len(self.spans) != q or (self.types is not None and len(self.types) != q):
      raise ValueError(f"GroundTruth: fields have different lengths (desc_id has {q})")
    if self.types is not None:
      object.__setattr__(self, "types", tuple(self.types))

  def __len__(self) -> int:
    return len(self.desc_id)

  @classmethod
  def from_records(cls, records: Sequence[Mapping[str, Any]], video2idx: Mapping[str, int]) -> "GroundTruth":
    """From TVR annotation records ({"desc_id", "vid_name", "ts": [st, ed], "type"?})."""
    video_index, spans, types = [], [], []
    for r in records:
      if r.get("vid_name") not in video2idx:
        raise ValueError(f"ground truth desc_id={r.get('desc_id')}: field 'vid_name' {r.get('vid_name')!r} "
                         "is not in the submission's video2idx")
      ts = r.get("ts")
      if not (isinstance(ts, (list, tuple)) and len(ts) == 2 and all(np.isscalar(x) for x in ts)):
        raise ValueError(f"ground truth desc_id={r.get('desc_id')}: field 'ts' must be [st, ed] "
                         "(multi-span ground truth is not supported)")
      video_index.append(video2idx[r["vid_name"]])
      spans.append(ts)
      types.append(r.get("type", ""))
    has_types = bool(records) and all(t in DESC_TYPES for t in types)
    return cls(desc_id=[r["desc_id"] for r in records], video_index=video_index,
               spans=np.asarray(spans, np.float32).reshape(-1, 2), types=tuple(types) if has_types else None)

  @classmethod
  def from_query_table(cls, table) -> "GroundTruth":
    """From a `prepared_data.QueryTable` (its `video_index` is the split's official index)."""
    types = tuple(table.type)
    return cls(desc_id=table.desc_id, video_index=table.video_index,
               spans=np.stack([table.st, table.ed], axis=-1),
               types=types if types and all(t in DESC_TYPES for t in types) else None)


def ground_truth_records(table) -> list[dict]:
  """A `QueryTable` as TVR annotation records, the `ground_truth` of `evaluate_predictions`."""
  out = []
  for i in range(len(table)):
    rec = {"desc_id": int(table.desc_id[i]), "desc": table.desc[i], "vid_name": table.vid_name[i],
           "ts": [float(table.st[i]), float(table.ed[i])], "duration": float(table.duration[i])}
    if table.type[i]:
      rec["type"] = table.type[i]
    out.append(rec)
  return out


def _check_thresholds(ious) -> np.ndarray:
  ious = np.asarray(ious, np.float32)
  if np.any(ious <= 0):
    raise ValueError(f"IoU thresholds must be > 0, got {ious.tolist()}")
  return ious


def _pad(predictions: Sequence, max_pred: int):
  """Truncates each query's predictions to `max_pred` and pads them.

  Returns: video float64 [Q, P], spans float32 [Q, P, 2], valid bool [Q, P],
  count int64 [Q] (P = longest truncated list, at least 1).
  """
  rows = []
  for i, p in enumerate(predictions):
    a = np.asarray(p, np.float64)
    a = a.reshape(0, 3) if a.size == 0 else a
    if a.ndim != 2 or a.shape[1] < 3:
      raise ValueError(f"predictions[{i}]: expected [n, >=3] (video, st, ed[, score]), got shape {a.shape}")
    rows.append(a[:max_pred])
  count = np.asarray([len(a) for a in rows], np.int64)
  p = max(1, int(count.max(initial=0)))
  video = np.full((len(rows), p), -1.0)
  spans = np.zeros((len(rows), p, 2), np.float32)
  for i, a in enumerate(rows):
    video[i, :len(a)] = a[:, 0]
    spans[i, :len(a)] = a[:, 1:3]
  valid = np.arange(p)[None, :] < count[:, None]
  return video, spans, valid, count


def _match_and_correct(predictions, gt: GroundTruth, ious, max_pred):
  """match bool [Q, P] (right video), correct bool [Q, P, I] (right video and IoU >= thr), count [Q]."""
  if len(predictions) != len(gt):
    raise ValueError(f"{len(predictions)} prediction lists for {len(gt)} ground-truth queries")
  video, spans, valid, count = _pad(predictions, max_pred)
  match = valid & (video == gt.video_index[:, None])
  iou = temporal_iou(spans, gt.spans[:, None, :])  # [Q, P]
  correct = match[..., None] & (iou[..., None] >= _check_thresholds(ious))
  return match, correct, count


def vcmr_query_hits(predictions, ground_truth: GroundTruth, ks=RECALL_KS, ious=IOU_THDS,
                    max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, np.ndarray]":
  """VCMR hits per query: {"{iou}-r{k}": bool [Q]}, iou outer, k inner."""
  _, correct, _ = _match_and_correct(predictions, ground_truth, ious, max_pred_per_query)
  return OrderedDict((f"{thr}-r{k}", correct[:, :k, i].any(axis=1))
                     for i, thr in enumerate(ious) for k in ks)


def svmr_query_hits(predictions, ground_truth: GroundTruth, ks=RECALL_KS, ious=IOU_THDS,
                    max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, np.ndarray]":
  """SVMR hits per query: like VCMR, but K counts only predictions in the right video."""
  match, correct, _ = _match_and_correct(predictions, ground_truth, ious, max_pred_per_query)
  rank_in_video = np.cumsum(match, axis=1)  # 1-based rank among right-video predictions
  out = OrderedDict()
  for i, thr in enumerate(ious):
    for k in ks:
      out[f"{thr}-r{k}"] = (correct[:, :, i] & (rank_in_video <= k)).any(axis=1)
  return out


def _vr_hits(match, ks) -> "OrderedDict[str, np.ndarray]":
  return OrderedDict((f"r{k}", match[:, :k].any(axis=1)) for k in ks)


def _vr_ranks(match, count) -> np.ndarray:
  return np.where(match.any(axis=1), np.argmax(match, axis=1) + 1, count + 1)


def vr_query_hits(predictions, ground_truth: GroundTruth, ks=RECALL_KS,
                  max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, np.ndarray]":
  """VR hits per query: {"r{k}": bool [Q]} (st/ed are not used)."""
  match, _, _ = _match_and_correct(predictions, ground_truth, (1.0,), max_pred_per_query)
  return _vr_hits(match, ks)


def vr_ranks(predictions, ground_truth: GroundTruth, max_pred_per_query=MAX_PRED_PER_QUERY) -> np.ndarray:
  """int64 [Q] 1-based rank of the first prediction naming the right video; absent: list length + 1."""
  match, _, count = _match_and_correct(predictions, ground_truth, (1.0,), max_pred_per_query)
  return _vr_ranks(match, count)


def _median(ranks: np.ndarray) -> float:
  return float(np.median(ranks)) if len(ranks) else float("nan")


def recall_from_hits(hits: Mapping[str, np.ndarray]) -> "OrderedDict[str, float]":
  """{key: bool [Q]} -> {key: percent of True, 2 decimals}."""
  return OrderedDict((key, rounded_percentage(np.mean(h)) if len(h) else float("nan"))
                     for key, h in hits.items())


def vcmr_recall(predictions, ground_truth: GroundTruth, ks=RECALL_KS, ious=IOU_THDS,
                max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, float]":
  """VCMR Recall@K at IoU >= thr, percent: {"0.5-r1": ..., ...}."""
  return recall_from_hits(vcmr_query_hits(predictions, ground_truth, ks, ious, max_pred_per_query))


def svmr_recall(predictions, ground_truth: GroundTruth, ks=RECALL_KS, ious=IOU_THDS,
                max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, float]":
  """SVMR Recall@K at IoU >= thr, percent: {"0.5-r1": ..., ...}."""
  return recall_from_hits(svmr_query_hits(predictions, ground_truth, ks, ious, max_pred_per_query))


def vr_recall(predictions, ground_truth: GroundTruth, ks=RECALL_KS,
              max_pred_per_query=MAX_PRED_PER_QUERY) -> "OrderedDict[str, float]":
  """VR Recall@K, percent: {"r1": ..., ...}."""
  return recall_from_hits(vr_query_hits(predictions, ground_truth, ks, max_pred_per_query))


def vr_median_rank(predictions, ground_truth: GroundTruth, max_pred_per_query=MAX_PRED_PER_QUERY) -> float:
  """Median over queries of `vr_ranks` (numpy.median; NaN without queries)."""
  return _median(vr_ranks(predictions, ground_truth, max_pred_per_query))


def per_type(hits: Mapping[str, np.ndarray], types: Sequence[str],
             ranks: np.ndarray | None = None) -> "OrderedDict[str, Any]":
  """Per-type breakdown, keys as the reference's `*_by_type`.

  Args:
    hits: {key: bool [Q]}; types: Q strings in DESC_TYPES; ranks: optional int [Q]
      VR ranks, adding "{type}-median_rank" (ours).
  Returns:
    {"{type}-{key}": percent (NaN for a type without queries)} type outer, then
    "desc_type_ratio": "v {} t {} vt {}" (percent of queries of each type).
  """
  types = np.asarray(types)
  out = OrderedDict()
  for t in DESC_TYPES:
    in_type = types == t
    n = int(in_type.sum())
    for key, h in hits.items():
      # 0 / 0 is NaN in the reference too; spelled out to avoid numpy's warning.
      out[f"{t}-{key}"] = rounded_percentage(np.sum(h & in_type) / n) if n else float("nan")
    if ranks is not None:
      out[f"{t}-median_rank"] = _median(np.asarray(ranks)[in_type])
  ratios = [rounded_percentage(np.sum(types == t) / len(types)) if len(types) else float("nan")
            for t in DESC_TYPES]
  out["desc_type_ratio"] = "v {} t {} vt {}".format(*ratios)
  return out


def tl_metrics(pred_spans, gt_spans, ious=TL_IOU_THDS) -> "OrderedDict[str, float]":
  """Single-video temporal localisation (paper 4.1, TL): one predicted span per query.

  Args:
    pred_spans, gt_spans: [N, 2] [st, ed] seconds.
  Returns:
    {"mIoU": percent, "0.3-r1": percent of IoU >= 0.3, ...}, 2 decimals.
  """
  iou = temporal_iou(np.asarray(pred_spans).reshape(-1, 2), np.asarray(gt_spans).reshape(-1, 2))
  out = OrderedDict(mIoU=rounded_percentage(np.mean(iou.astype(np.float64))) if len(iou) else float("nan"))
  _check_thresholds(ious)
  for thr in ious:  # keys from the given Python floats: "0.3-r1", not float32's repr
    out[f"{thr}-r1"] = rounded_percentage(np.mean(iou >= np.float32(thr))) if len(iou) else float("nan")
  return out


def evaluate_predictions(submission: Mapping[str, Any], ground_truth: Sequence[Mapping[str, Any]], *,
                         ious=IOU_THDS, ks=RECALL_KS, max_pred_per_query=MAX_PRED_PER_QUERY,
                         match_number: bool = True, use_desc_type: bool | None = None) -> "OrderedDict[str, Any]":
  """The reference's `eval_retrieval` on a TVR submission (see predictions.py for the layout).

  Args:
    submission: {"video2idx": {vid_name: idx}, "VCMR"/"SVMR"/"VR": [entries]}.
    ground_truth: TVR annotation records {"desc_id", "vid_name", "ts": [st, ed], "type"?}.
    match_number: desc_ids of every task and of the ground truth must be the same
      set (the reference's default); False leaves unmatched queries out.
    use_desc_type: add "<task>_by_type"; None: when every record has a v/t/vt type.
  Returns:
    {"VCMR": {"0.5-r1": ..}, "SVMR": {..}, "VR": {"r1": .., "median_rank": ..},
     then "VCMR_by_type", ... when use_desc_type}, for the tasks present.
  """
  video2idx = submission["video2idx"]
  # Later duplicates win, as the reference's dict comprehensions.
  gt_by_id = {r["desc_id"]: r for r in ground_truth}
  if use_desc_type is None:
    use_desc_type = bool(gt_by_id) and all(r.get("type") in DESC_TYPES for r in gt_by_id.values())
  results, by_type = OrderedDict(), OrderedDict()
  for task in TASK_TYPES:
    if task not in submission:
      continue
    pred_by_id = {e["desc_id"]: e for e in submission[task]}
    if match_number and set(pred_by_id) != set(gt_by_id):
      missing = sorted(set(gt_by_id) - set(pred_by_id), key=str)
      extra = sorted(set(pred_by_id) - set(gt_by_id), key=str)
      raise ValueError(f"{task}: desc_ids of predictions and ground truth must match: {len(missing)} ground-truth "
                       f"queries without predictions (e.g. {missing[:5]}), {len(extra)} predicted queries without "
                       f"ground truth (e.g. {extra[:5]})")
    records = [r for k, r in gt_by_id.items() if k in pred_by_id]
    gt = GroundTruth.from_records(records, video2idx)
    preds = [pred_by_id[r["desc_id"]]["predictions"] for r in records]
    if task == "VR":
      match, _, count = _match_and_correct(preds, gt, (1.0,), max_pred_per_query)  # Once for hits and ranks.
      hits, ranks = _vr_hits(match, ks), _vr_ranks(match, count)
      results[task] = recall_from_hits(hits)
      results[task]["median_rank"] = _median(ranks)
    else:
      fn = vcmr_query_hits if task == "VCMR" else svmr_query_hits
      hits = fn(preds, gt, ks, ious, max_pred_per_query)
      ranks = None
      results[task] = recall_from_hits(hits)
    if use_desc_type:
      by_type[f"{task}_by_type"] = per_type(hits, [r["type"] for r in records], ranks)
  results.update(by_type)
  return results


def _fmt(v) -> str:
  if isinstance(v, str):
    return v
  return "-" if v != v else f"{v:.2f}"  # v != v: NaN (a type without queries)


def format_table(metrics: Mapping[str, Any]) -> str:
  """Markdown: one table per task, columns its metrics, rows "all" and each type.

  Accepts `evaluate_predictions` output, and any {name: {metric: number}} (e.g.
  {"TL": tl_metrics(...)}).
  """
  blocks = []
  for task, values in metrics.items():
    if task.endswith("_by_type") or not isinstance(values, Mapping):
      continue
    keys = list(values)
    lines = [f"| {task} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| all | " + " | ".join(_fmt(values[k]) for k in keys) + " |"]
    by_type = metrics.get(f"{task}_by_type")
    if isinstance(by_type, Mapping):
      for t in DESC_TYPES:
        if any(f"{t}-{k}" in by_type for k in keys):
          lines.append(f"| {t} | " + " | ".join(_fmt(by_type.get(f"{t}-{k}", float("nan"))) for k in keys) + " |")
      if "desc_type_ratio" in by_type:
        lines.append(f"\nquery types (%): {by_type['desc_type_ratio']}")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks) + "\n"
