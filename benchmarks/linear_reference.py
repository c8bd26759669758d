"""A closed-form linear bag-of-words reference learner, scored like HAMMER.

What a model could learn from the training queries, measured without any
training loop: ridge regression from a query's bag of content words
(`data_prep.real_text_corpus.content_words`, vocabulary = the training split's
words) to the mean feature row of its moment (visual and subtitle rows side by
side, centred by the training rows' mean), fitted in closed form on the
training split of a prepared corpus. It reads the corpus exactly as HAMMER's
evaluation does (`eval_video_batches`: the same `max_frames` cut, ActivityNet's
resampled rows), so both see the same frames.

Scoring a val query: y = bag(query) W, a prediction of its moment's (centred)
feature. Every span [s, e] of at most `max_span` rows of every val video gets
cos(y, mean of its centred rows); a video's score is its best span's (VR), its
spans in score order are its moments (SVMR, TL: the best one), and the VCMR list
is every video's top `spans_per_video` spans, by score. Predictions go through
the same submission and metrics code as HAMMER's (`predictions`,
`metrics.evaluate_predictions`), so the numbers compare one to one.
`lambda` is chosen from `LAMBDAS` on a 20% hold-out of the training videos.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_prep.real_text_corpus import content_words
from hammer_jax.data import alignment, input_pipeline, prepared_data
from hammer_jax.retrieval import evaluator, inference, metrics, predictions

LAMBDAS = (0.3, 1.0, 3.0, 10.0)


def read_split(data: prepared_data.PreparedData, split: str, spec: input_pipeline.PipelineSpec):
  """(rows [V, F, D] with subtitles concatenated, frame counts [V], frame_seconds [V], durations [V], queries)."""
  rows, n, secs, durs = [], [], [], []
  for batch in input_pipeline.eval_video_batches(data, split, spec, 64, process_index=0, process_count=1):
    real = batch["example_mask"] > 0
    x = batch["video"]
    if "subtitle" in batch:
      x = np.concatenate([x, batch["subtitle"]], axis=-1)
    rows.append(x[real])
    n.append(batch["frame_mask"][real].sum(axis=1))
    secs.append(batch["frame_seconds"][real])
    durs.append(batch["duration"][real])
  return (np.concatenate(rows).astype(np.float64), np.concatenate(n).astype(np.int64),
          np.concatenate(secs), np.concatenate(durs), prepared_data.read_queries(data, split))


def _frames(queries, q: int, frame_seconds: float, n: int) -> tuple[int, int]:
  s, e = alignment.seconds_to_frames(float(queries.st[q]), float(queries.ed[q]), frame_seconds, n)
  return int(s), int(e)


def _bags(descs: list[str], vocab: dict[str, int]) -> np.ndarray:
  x = np.zeros((len(descs), len(vocab)))
  for i, d in enumerate(descs):
    for w in content_words(d):
      if w in vocab:
        x[i, vocab[w]] = 1.0
  return x


def fit(descs: list[str], targets: np.ndarray, lam: float) -> tuple[dict[str, int], np.ndarray]:
  """(vocabulary, W [words, D]) of ridge regression bag -> target."""
  vocab = {w: i for i, w in enumerate(sorted({w for d in descs for w in content_words(d)}))}
  x = _bags(descs, vocab)
  w = np.linalg.solve(x.T @ x + lam * np.eye(len(vocab)), x.T @ targets)
  return vocab, w


def span_table(rows: np.ndarray, n: int, max_span: int) -> tuple[np.ndarray, np.ndarray]:
  """Every span of at most max_span of the first n rows: (spans [S, 2] (s, e), unit mean rows [S, D])."""
  csum = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows[:n], axis=0)])
  s, e = np.triu_indices(n)
  keep = e - s < max_span
  s, e = s[keep], e[keep]
  means = (csum[e + 1] - csum[s]) / (e - s + 1)[:, None]
  return np.stack([s, e], 1), means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-9)


def evaluate(data: prepared_data.PreparedData, spec: input_pipeline.PipelineSpec, *, train_split: str = "train",
             eval_split: str = "val", max_span: int = 48, spans_per_video: int = 5) -> dict[str, Any]:
  """Fits on `train_split`, scores `eval_split`; returns metrics like HAMMER's evaluation (+ "lambda")."""
  rows, n, secs, _, tq = read_split(data, train_split, spec)
  mean_row = np.concatenate([rows[v, :n[v]] for v in range(len(n))]).mean(axis=0)
  keep, targets = [], []
  for q in range(len(tq)):
    v = int(tq.video_index[q])
    s, e = _frames(tq, q, secs[v], n[v])
    if tq.st[q] / secs[v] < n[v]:  # moments past the frame cut are left out of training, as HAMMER's
      keep.append(q)
      targets.append(rows[v, s:e + 1].mean(axis=0) - mean_row)
  targets = np.asarray(targets)
  descs = [tq.desc[q] for q in keep]
  videos = np.asarray([int(tq.video_index[q]) for q in keep])
  # lambda by a hold-out of 20% of the training videos (VR R@1 of the same scoring).
  held = np.isin(videos, np.unique(videos)[::5])
  cand = np.unique(videos[held])
  cand_spans = [span_table(rows[v] - mean_row, n[v], max_span)[1] for v in cand]  # once for every lambda
  best = None
  for lam in LAMBDAS:
    vocab, w = fit([d for d, h in zip(descs, held) if not h], targets[~held], lam)
    y = _bags([d for d, h in zip(descs, held) if h], vocab) @ w
    video_scores = np.stack([(means @ y.T).max(axis=0) for means in cand_spans], axis=1)
    r1 = float(np.mean(cand[video_scores.argmax(axis=1)] == videos[held]))
    if best is None or r1 > best[0]:
      best = (r1, lam)
  lam = best[1]
  vocab, w = fit(descs, targets, lam)

  rows, n, secs, durs, vq = read_split(data, eval_split, spec)
  y = _bags(vq.desc, vocab) @ w
  y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-9)
  per_video = []  # (spans [S, 2], scores [Q, S]) per video
  for v in range(len(n)):
    spans, means = span_table(rows[v] - mean_row, n[v], max_span)
    per_video.append((spans, y @ means.T))
  video2idx, position_to_idx = evaluator.official_video_ids(data, eval_split)
  vcmr, svmr, vr, tl_pred, tl_gt = [], [], [], [], []
  for q in range(len(vq)):
    desc_id, desc, gt = int(vq.desc_id[q]), vq.desc[q], int(vq.video_index[q])
    best_of = np.array([sc[q].max() for _, sc in per_video])
    vr.append(predictions.make_vr_entry(desc_id, desc, position_to_idx, best_of))
    cand_v, cand_st, cand_ed, cand_score = [], [], [], []
    for v, (spans, sc) in enumerate(per_video):
      order = np.argsort(-sc[q], kind="stable")
      top = order[:spans_per_video]
      st, ed = _seconds(spans[top], secs[v], durs[v])
      cand_v.append(np.full(len(top), position_to_idx[v])), cand_st.append(st), cand_ed.append(ed)
      cand_score.append(sc[q][top])
      if v == gt:
        top100 = order[:predictions.MAX_PREDICTIONS]
        gst, ged = _seconds(spans[top100], secs[v], durs[v])
        svmr.append(predictions.make_entry(desc_id, desc, np.full(len(top100), position_to_idx[v]), gst, ged,
                                           sc[q][top100]))
        tl_pred.append((gst[0], ged[0]))
        tl_gt.append((float(vq.st[q]), float(vq.ed[q])))
    vcmr.append(predictions.make_entry(desc_id, desc, *map(np.concatenate, (cand_v, cand_st, cand_ed, cand_score))))
  submission = predictions.make_submission(video2idx, vcmr=vcmr, svmr=svmr, vr=vr)
  records = [{"desc_id": int(vq.desc_id[q]), "vid_name": vq.vid_name[q], "ts": [float(vq.st[q]), float(vq.ed[q])],
              "type": vq.type[q]} for q in range(len(vq))]
  results = metrics.evaluate_predictions(submission, records, use_desc_type=False)
  results["TL"] = metrics.tl_metrics(np.asarray(tl_pred), np.asarray(tl_gt))
  results["lambda"] = lam
  results["vocabulary"] = len(vocab)
  return results


def _seconds(spans: np.ndarray, frame_seconds: float, duration: float) -> tuple[np.ndarray, np.ndarray]:
  """Frame spans [S, 2] -> seconds with HAMMER's rule (inference.frames_to_seconds)."""
  k = len(spans)
  st, ed = inference.frames_to_seconds(spans[:, 0], spans[:, 1], np.full(k, frame_seconds, np.float32),
                                       np.full(k, duration, np.float32))
  return np.asarray(st, np.float64), np.asarray(ed, np.float64)
