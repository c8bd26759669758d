"""Corpus moment retrieval (paper 3.5, Eq. 3): rank the videos, then localise in the best ones.

`retrieve(scorer, params, corpus, token_ids, top_k=K)` is the one retrieval path:
the eval binary, training's periodic and final evaluations, the demo and search
(with one query) all call it. Per query:

  1. f(v, h) (Eq. 9) against every corpus video (`PairScorer.vr_scores`); the VR
     ranking is `inference.rank_videos` (ties keep corpus order);
  2. in the top K videos, greedy (or joint) start/end decoding
     (`PairScorer.localise`); each moment's log score is Eq. 2's
     log p(v|h) + log p_start + log p_end with p(v|h) the softmax of f over the
     whole corpus (`inference.corpus_log_probs`); the VCMR list ranks them;
  3. given the ground-truth videos: SVMR (the best start <= end pairs in the
     ground-truth video), the greedy moment there (TL) and the moments of the frame
     level and the clip level alone (Figure 5), and the exact rank of the
     ground-truth video under the same tie rule (Figures 2-3).

Two-stage mode (`first_stage=`, a `first_stage.FirstStageIndex` of the
dual-encoder clip vectors): step 1 scores only the index's top `candidates`
videos, each with one HAMMER pass that also localises (so step 2 costs
nothing more), and p(v|h) is the softmax over those candidates (`_two_stage`).
The corpus is then read only at those candidates' rows (`corpus.take`), so it
may be a `parts_store.StoredCorpus` that never holds every video's parts.

Each process handles a contiguous share of the queries and the results are
gathered, so every process returns the whole list (a multi-host job evaluates
as one).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hammer_jax.data import input_pipeline
from hammer_jax.retrieval import inference
from hammer_jax.retrieval.corpus import Corpus
from hammer_jax.retrieval.first_stage import FirstStageIndex
from hammer_jax.retrieval.predictions import MAX_PREDICTIONS
from hammer_jax.retrieval.scorer import PairScorer


@dataclasses.dataclass
class Retrieval:
  """Per query (rows of `query_rows`), K = min(top_k, corpus size), V the corpus size.

  vr_rank_video: [Q, min(100, V)] split positions of the top videos, best first; vr_score: f(v, h) of those.
  gt_rank: [Q] 1-based rank of the ground-truth video among all V (0 when unknown).
  vcmr: [Q, K, 4] (video split position, st, ed, log score) sorted by score, best first.
  svmr: [Q, K, 3] (st, ed, log score) in the ground-truth video (empty K when unknown).
  greedy_gt: [Q, 2] the decoded (st, ed) in the ground-truth video (TL), seconds.
  frame_only_gt, clip_only_gt: [Q, 2] spans from the frame level alone / clip level alone (Figure 5).
  first_stage: [Q, n] split positions of the first stage's videos, best first (-1 padded; n = 0 when
    retrieval is exhaustive).
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
  first_stage: np.ndarray


def _seconds(start, end, corpus: Corpus, rows):
  """Frames -> seconds (`inference.frames_to_seconds`) for videos at corpus positions `rows`."""
  st, ed = inference.frames_to_seconds(np.asarray(start), np.asarray(end), corpus.frame_seconds[rows],
                                       corpus.duration[rows])
  return np.asarray(st), np.asarray(ed)


def retrieve(scorer: PairScorer, params, corpus: Corpus, token_ids: list[np.ndarray], *, top_k: int,
             max_query_len: int, ground_truth: np.ndarray | None = None,
             query_rows: np.ndarray | None = None, local: bool = False,
             vr_pairs_per_call: int | None = None, first_stage: FirstStageIndex | None = None,
             candidates: int | None = None, recall_index: FirstStageIndex | None = None) -> Retrieval:
  """Both stages for the queries `token_ids[query_rows]` (default: all) against `corpus`.

  Args:
    token_ids: tokenised queries ([CLS] ... [SEP] each; cut to max_query_len like
      the training queries).
    ground_truth: [len(token_ids)] split position of each query's video, or None.
    local: this process answers every query itself (search); otherwise the
      queries are shared out over the processes and the results gathered.
    vr_pairs_per_call: pairs per VR device program (default: the scorer's batch).
    first_stage: two-stage retrieval: this index's top `candidates` videos
      (default: all) are re-scored by HAMMER instead of every corpus video.
    recall_index: exhaustive mode: also list this index's top videos per query
      (`Retrieval.first_stage`, for the first stage's recall).
  """
  rows_all = np.arange(len(token_ids)) if query_rows is None else np.asarray(query_rows)
  share = (0, 1) if local else (jax.process_index(), jax.process_count())
  start, end = input_pipeline.process_range(len(rows_all), *share)
  rows = rows_all[start:end]
  v = len(corpus)
  k_vr = min(MAX_PREDICTIONS, v)  # VR ranks every video: the list is as long as a submission allows.
  if first_stage is None:
    k, n_fs = min(top_k, v), (k_vr if recall_index is not None else 0)
  else:
    candidates = min(int(candidates or v), v)
    k, n_fs = min(top_k, candidates), min(max(candidates, k_vr), v)
  with_gt = ground_truth is not None
  mine = None
  if len(rows):
    batches = input_pipeline.eval_query_batches([token_ids[r] for r in rows], max_query_len, scorer.batch_size,
                                                process_index=0, process_count=1)
    q_parts = scorer.encode_queries(params, batches)
    if first_stage is None:
      ranked = _exhaustive(scorer, params, q_parts, corpus, vr_pairs_per_call)
      if recall_index is not None:  # listed for its recall only; HAMMER still scores every video
        ranked["first_stage"] = recall_index.search(scorer.embed_queries(params, q_parts), n_fs)[0]
    else:
      ranked = _two_stage(scorer, params, q_parts, corpus, first_stage, candidates, n_fs)
    order, vr_list_score, log_p_v = ranked["order"], ranked["score"], ranked["log_p_v"]
    top = order[:, :k]
    if "loc" in ranked:    # two-stage: the candidates were scored and localised in one pass
      pick = ranked["loc_order"][:, :k]
      loc = {key: np.take_along_axis(val.reshape(len(rows), -1), pick, 1).reshape(-1)
             for key, val in ranked["loc"].items() if key in ("start", "end", "log_score")}
    else:
      loc = scorer.localise(params, q_parts, corpus, np.repeat(np.arange(len(rows)), k), top.reshape(-1), k=1)
    st, ed = _seconds(loc["start"], loc["end"], corpus, top.reshape(-1))
    moment = inference.moment_log_score(np.take_along_axis(log_p_v, top, 1).reshape(-1) if first_stage is None
                                        else log_p_v[:, :k].reshape(-1), loc["log_score"])
    moment = np.maximum(moment, -1e30)  # a padded two-stage place: probability 0, kept finite for the files
    vcmr = np.stack([corpus.video_index[top.reshape(-1)], st, ed, moment], -1).reshape(len(rows), k, 4)
    vcmr = np.take_along_axis(vcmr, np.argsort(-vcmr[..., 3], axis=1, kind="stable")[..., None], 1)
    gt_rank = np.zeros(len(rows), np.int64)
    svmr = np.zeros((len(rows), 0, 3), np.float32)
    spans = [np.zeros((len(rows), 2), np.float32)] * 3
    if with_gt:
      gt = corpus.positions_of(np.asarray(ground_truth)[rows])
      gt_rank = ranked["rank_of"](gt)
      loc_gt = scorer.localise(params, q_parts, corpus, np.arange(len(rows)), gt, k=k)
      sst, sed = _seconds(loc_gt["top_start"], loc_gt["top_end"], corpus, gt)
      svmr = np.stack([sst, sed, loc_gt["top_log_score"]], -1)
      spans = [np.stack(_seconds(loc_gt[f"{level}start"], loc_gt[f"{level}end"], corpus, gt), -1)
               for level in ("", "frame_", "clip_")]
    top_vr = order[:, :k_vr]
    fs = ranked.get("first_stage", np.zeros((len(rows), 0), np.int64))
    mine = dict(rows=rows, top=corpus.video_index[top_vr], score=vr_list_score[:, :k_vr],
                gt_rank=gt_rank, vcmr=vcmr, svmr=svmr, greedy=spans[0], frame=spans[1], clip=spans[2],
                first_stage=np.where(fs >= 0, corpus.video_index[np.maximum(fs, 0)], -1))
  return _gather(mine, len(rows_all), k, k_vr, n_fs, with_gt, local)


def _exhaustive(scorer, params, q_parts, corpus, vr_pairs_per_call):
  """f(v, h) against every video; p(v|h) the softmax over the whole corpus (Eq. 2)."""
  scores = scorer.vr_scores(params, q_parts, corpus, batch_size=vr_pairs_per_call)  # [q, V]
  order = inference.rank_videos(scores)
  return dict(order=order, score=np.take_along_axis(scores, order, 1), log_p_v=inference.corpus_log_probs(scores),
              rank_of=lambda gt: inference.rank_of(scores, gt))


def _two_stage(scorer, params, q_parts, corpus, first_stage, candidates: int, n_fs: int):
  """The first stage's top `candidates` videos, scored and localised by HAMMER in one pass each.

  The candidates are ranked by f(v, h) (ties: corpus order, as exhaustive) and
  p(v|h) is the softmax of f over the candidates only: with candidates = V it is
  the exhaustive formula, otherwise the mass of the videos the first stage left
  out is taken as 0. The VR list continues past the candidates with the first
  stage's next videos, below every candidate. Returns what `_exhaustive` does,
  with log_p_v [q, candidates] in the ranked order, plus the pass's outputs.
  """
  q = q_parts["query_mask"].shape[0]
  fs_pos, _ = first_stage.search(scorer.embed_queries(params, q_parts), n_fs)          # [q, n_fs]
  cand = fs_pos[:, :candidates]
  valid = cand >= 0
  cand_safe = np.where(valid, cand, 0)
  # At least one query's candidates per program: a single query (search) reads its K candidates' parts in one
  # store read and scores them in one device call, not K calls of one row.
  loc = scorer.localise(params, q_parts, corpus, np.repeat(np.arange(q), candidates), cand_safe.reshape(-1), k=1,
                        batch_size=max(scorer.batch_size, candidates))
  f = np.where(valid, loc["vr_score"].reshape(q, candidates), -np.inf)
  by_position = np.argsort(np.where(valid, cand, np.iinfo(np.int64).max), axis=1, kind="stable")
  rerank = np.take_along_axis(by_position, np.argsort(-np.take_along_axis(f, by_position, 1), axis=1,
                                                      kind="stable"), 1)       # candidate columns, best first
  ranked_pos = np.take_along_axis(cand_safe, rerank, 1)
  ranked_f = np.take_along_axis(f, rerank, 1)
  log_p_v = np.where(np.isfinite(ranked_f), inference.corpus_log_probs(np.where(np.isfinite(ranked_f), ranked_f,
                                                                                -1e30)), -np.inf)
  order, score = [], []
  for i in range(q):
    real = np.isfinite(ranked_f[i])
    head, head_f = ranked_pos[i][real], ranked_f[i][real]
    rest = fs_pos[i, candidates:]
    tail = rest[(rest >= 0) & ~np.isin(rest, head)]
    low = float(head_f.min()) if len(head) else 0.0
    order.append(np.concatenate([head, tail]))
    score.append(np.concatenate([head_f, low - 1.0 - np.arange(len(tail))]))
  # At least `candidates` wide: an approximate index may list fewer videos for a query; the
  # missing places repeat its last video with probability 0 (never a crash or a NaN).
  width = max(max(len(o) for o in order), candidates)
  order_arr = np.stack([np.pad(o, (0, width - len(o)), constant_values=o[-1] if len(o) else 0) for o in order])
  score_arr = np.stack([np.pad(s, (0, width - len(s)), constant_values=-np.inf) for s in score])

  def rank_of(gt):
    """1-based rank in the VR list; len + 1 when the first stage did not list the video."""
    hits = order_arr == gt[:, None]
    return np.where(hits.any(1), hits.argmax(1) + 1, width + 1)

  return dict(order=order_arr, score=score_arr, log_p_v=log_p_v, rank_of=rank_of, loc=loc, loc_order=rerank,
              first_stage=fs_pos)


def _gather(mine, n: int, k: int, k_vr: int, n_fs: int, with_gt: bool, local: bool) -> Retrieval:
  """Concatenates every process's rows (processes hold contiguous, ordered shares)."""
  shapes = dict(rows=(), top=(k_vr,), score=(k_vr,), gt_rank=(), vcmr=(k, 4), svmr=(k if with_gt else 0, 3),
                greedy=(2,), frame=(2,), clip=(2,), first_stage=(n_fs,))
  if local or jax.process_count() == 1:
    full = mine
  else:
    from jax.experimental import multihost_utils
    from hammer_jax import distributed
    distributed.barrier(f"retrieve_gather_{n}_{k}")  # Shares can finish minutes apart; gloo waits 30 s.
    per = -(-n // jax.process_count())
    padded = {}
    for key, shape in shapes.items():
      arr = np.zeros((per,) + shape, np.float64)
      if mine is not None:
        arr[:len(mine["rows"])] = mine[key]
      padded[key] = arr
    count = np.array([0 if mine is None else len(mine["rows"])])
    gathered = multihost_utils.process_allgather(padded)
    counts = multihost_utils.process_allgather(count).reshape(-1)
    full = {key: np.concatenate([gathered[key][p][:counts[p]] for p in range(len(counts))]) for key in shapes}
  return Retrieval(query_rows=full["rows"].astype(np.int64), vr_rank_video=full["top"].astype(np.int64),
                   vr_score=full["score"].astype(np.float32), gt_rank=full["gt_rank"].astype(np.int64),
                   vcmr=full["vcmr"].astype(np.float64), svmr=full["svmr"].astype(np.float64),
                   greedy_gt=full["greedy"].astype(np.float32), frame_only_gt=full["frame"].astype(np.float32),
                   clip_only_gt=full["clip"].astype(np.float32), first_stage=full["first_stage"].astype(np.int64))
