"""Moment retrieval over a split: ranked videos and moments per query (paper 3.5).

`retrieve(evaluator, params, queries)` runs the two stages of Eq. 3 with the
`Evaluator` and returns, per query, the VR ranking, the VCMR moments (one per
top video, scored p(v|h) * p_start * p_end) and, when the ground truth is known,
the SVMR moments (the best start <= end pairs in the ground-truth video). Each
process handles its share of the queries; the results are gathered so every
process returns the whole split.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hammer_jax import decoding, input_pipeline, prepared_data
from hammer_jax.evaluator import Corpus, Evaluator
from hammer_jax.predictions import MAX_PREDICTIONS


@dataclasses.dataclass
class Retrieval:
  """Per query (rows of `query_rows`), K = min(top_k, corpus size).

  vr_rank_video: [Q, min(100, V)] split positions of the top videos, best first; vr_score: f(v, h) of those.
  gt_rank: [Q] 1-based rank of the ground-truth video among all V (0 when unknown).
  vcmr: [Q, K, 4] (video position, st, ed, score) sorted by score.
  svmr: [Q, K, 3] (st, ed, score) in the ground-truth video (empty K when unknown).
  greedy_gt: [Q, 2] greedy (st, ed) in the ground-truth video (TL), seconds.
  frame_only_gt, clip_only_gt: [Q, 2] spans from the frame level alone / clip level alone (Figure 5).
  """
  query_rows: np.ndarray
  vr_rank_video: np.ndarray
  vr_score: np.ndarray
  gt_rank: np.ndarray
  vcmr: np.ndarray
  svmr: np.ndarray
  greedy_gt: np.ndarray
  frame_only_gt: np.ndarray
  clip_only_gt: np.ndarray


def _seconds(start, end, corpus: Corpus, rows):
  """Frames -> seconds (`decoding.frames_to_seconds`) for videos at corpus positions `rows` ([N])."""
  st, ed = decoding.frames_to_seconds(np.asarray(start), np.asarray(end), corpus.frame_seconds[rows],
                                      corpus.duration[rows])
  return np.asarray(st), np.asarray(ed)


def _level_spans(loc, clip_len: int, corpus: Corpus, rows):
  """Greedy spans from the frame level alone and from the clip level alone."""
  mask = corpus.frame_mask[rows] > 0
  f = mask.shape[1]
  frame_b = np.where(mask, loc["frame_log_probs"][..., 0], -np.inf)
  frame_e = np.where(mask, loc["frame_log_probs"][..., 1], -np.inf)
  fs = frame_b.argmax(1)
  fe = np.where(np.arange(f)[None] >= fs[:, None], frame_e, -np.inf).argmax(1)
  frame_span = _seconds(fs, fe, corpus, rows)
  if "clip_log_probs" not in loc:
    return frame_span, frame_span
  clip = loc["clip_log_probs"]
  cs = clip[..., 0].argmax(1)
  ce = np.where(np.arange(clip.shape[1])[None] >= cs[:, None], clip[..., 1], -np.inf).argmax(1)
  last = mask.sum(1) - 1
  clip_span = _seconds(cs * clip_len, np.minimum((ce + 1) * clip_len - 1, last), corpus, rows)
  return frame_span, clip_span


def retrieve(evaluator: Evaluator, params, queries: prepared_data.QueryTable, *, top_k: int,
             query_rows: np.ndarray | None = None, corpus: Corpus | None = None,
             with_ground_truth: bool = True) -> Retrieval:
  """Both stages for `queries[query_rows]` (default all) against the split's corpus."""
  corpus = corpus or evaluator.encode_corpus(params)
  rows_all = np.arange(len(queries)) if query_rows is None else np.asarray(query_rows)
  start, end = input_pipeline.process_range(len(rows_all), jax.process_index(), jax.process_count())
  rows = rows_all[start:end]
  v = len(corpus)
  k = min(top_k, v)
  k_vr = min(MAX_PREDICTIONS, v)  # VR ranks every video: the list is as long as a submission allows
  pos_of = np.full(int(corpus.video_index.max()) + 1, -1)
  pos_of[corpus.video_index] = np.arange(v)
  if len(rows):
    q_parts = evaluator.encode_queries(params, queries, rows)
    scores = evaluator.vr_scores(params, q_parts, corpus)                            # [q, V]
    order = np.argsort(-scores, axis=1, kind="stable")
    top = order[:, :k]
    log_p_v = scores - scores.max(1, keepdims=True)
    log_p_v = log_p_v - np.log(np.exp(log_p_v).sum(1, keepdims=True))            # log softmax over corpus
    q_idx = np.repeat(np.arange(len(rows)), k)
    loc = evaluator.localise(params, q_parts, corpus, q_idx, top.reshape(-1), k=1)
    st, ed = _seconds(loc["start"], loc["end"], corpus, top.reshape(-1))
    moment = np.exp(np.take_along_axis(log_p_v, top, 1).reshape(-1) + loc["log_score"])
    vcmr = np.stack([corpus.video_index[top.reshape(-1)], st, ed, moment], -1).reshape(len(rows), k, 4)
    vcmr = np.take_along_axis(vcmr, np.argsort(-vcmr[..., 3], axis=1, kind="stable")[..., None], 1)
    gt_rank = np.zeros(len(rows), np.int64)
    svmr = np.zeros((len(rows), 0, 3), np.float32)
    spans = [np.zeros((len(rows), 2), np.float32)] * 3
    if with_ground_truth:
      gt = pos_of[queries.video_index[rows]]
      gt_rank = 1 + (scores > scores[np.arange(len(rows)), gt][:, None]).sum(1)
      loc_gt = evaluator.localise(params, q_parts, corpus, np.arange(len(rows)), gt, k=k)
      sst, sed = _seconds(loc_gt["top_start"], loc_gt["top_end"], corpus, gt)
      svmr = np.stack([sst, sed, np.exp(loc_gt["top_log_score"])], -1)
      greedy = np.stack(_seconds(loc_gt["start"], loc_gt["end"], corpus, gt), -1)
      frame_span, clip_span = _level_spans(loc_gt, evaluator.config.model.clip_len, corpus, gt)
      spans = [greedy, np.stack(frame_span, -1), np.stack(clip_span, -1)]
    top_vr = order[:, :k_vr]
    local = dict(rows=rows, top=corpus.video_index[top_vr], score=np.take_along_axis(scores, top_vr, 1),
                 gt_rank=gt_rank, vcmr=vcmr, svmr=svmr, greedy=spans[0], frame=spans[1], clip=spans[2])
  else:
    local = None
  return _gather(local, len(rows_all), k, k_vr, with_ground_truth)


def _gather(local, n: int, k: int, k_vr: int, with_gt: bool) -> Retrieval:
  """Concatenates every process's rows (processes hold contiguous, ordered shares)."""
  shapes = dict(rows=(), top=(k_vr,), score=(k_vr,), gt_rank=(), vcmr=(k, 4), svmr=(k if with_gt else 0, 3),
                greedy=(2,), frame=(2,), clip=(2,))
  if jax.process_count() == 1:
    full = local
  else:
    from jax.experimental import multihost_utils
    per = -(-n // jax.process_count())
    padded = {}
    for key, shape in shapes.items():
      arr = np.zeros((per,) + shape, np.float64)
      if local is not None:
        arr[:len(local["rows"])] = local[key]
      padded[key] = arr
    count = np.array([0 if local is None else len(local["rows"])])
    gathered = multihost_utils.process_allgather(padded)
    counts = multihost_utils.process_allgather(count).reshape(-1)
    full = {key: np.concatenate([gathered[key][p][:counts[p]] for p in range(len(counts))]) for key in shapes}
  return Retrieval(query_rows=full["rows"].astype(np.int64), vr_rank_video=full["top"].astype(np.int64),
                   vr_score=full["score"].astype(np.float32), gt_rank=full["gt_rank"].astype(np.int64),
                   vcmr=full["vcmr"].astype(np.float64), svmr=full["svmr"].astype(np.float64),
                   greedy_gt=full["greedy"].astype(np.float32), frame_only_gt=full["frame"].astype(np.float32),
                   clip_only_gt=full["clip"].astype(np.float32))
