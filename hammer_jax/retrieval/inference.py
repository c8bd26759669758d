"""Inference of section 3.5: Eq. 2's corpus scores, start/end decoding, frames <-> seconds, ranks.

The one implementation of each rule that retrieval (evaluation, training's
periodic evaluation, search) applies to model outputs:

  Eq. 2: a moment's corpus score is p(v|h) * p_start * p_end, with p(v|h) the
    softmax of f(v, h) over the corpus (`corpus_log_probs`); moments are
    ranked by its log (`moment_log_score`), which does not underflow.
  Ranks: videos are ranked by f(v, h) descending with a stable sort, so ties
    keep corpus order (`rank_videos`, `rank_of`); predictions.make_entry keeps
    the same rule.

Decoding inputs are `Hammer.score_pairs` outputs: `start_log_scores`,
`end_log_scores` [B, F] (log p(t^s = t), log p(t^e = t); padded frames very
negative) and the `frame_mask` [B, F]. The decoders are jit-friendly (static
shapes, no Python branching on values).

  greedy (section 3.5, the default): start = argmax of the start score, then
    end = argmax of the end score over frames at or after the start.
  joint (choice, `config.model.decoding = "joint"`): the pair (s, e), s <= e,
    maximising log p_start(s) + log p_end(e) (the max of Eq. 5 over pairs).

`start <= end` (a one-frame moment is allowed, docs/paper_notes.md; Eq. 5 writes
a strict `>` but ground-truth moments can be one frame long). A moment's score is
log p_start + log p_end. `frames_to_seconds` maps frames to [st, ed) seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MASKED = -1e30  # Below any model score (Hammer.NEG_INF is -1e9, and sums of two).


def _masked(scores, frame_mask):
  return jnp.where(frame_mask > 0, scores.astype(jnp.float32), _MASKED)


def greedy_decode(start_log_scores, end_log_scores, frame_mask):
  """Section 3.5 greedy decoding.

  Args:
    start_log_scores, end_log_scores: [B, F]; frame_mask: [B, F].
  Returns:
    (start [B] int32, end [B] int32 with end >= start, log score [B]).
  """
  start_scores = _masked(start_log_scores, frame_mask)
  end_scores = _masked(end_log_scores, frame_mask)
  start = jnp.argmax(start_scores, axis=-1).astype(jnp.int32)
  frames = jnp.arange(start_scores.shape[-1])
  # 2 * _MASKED keeps frames before the start below padded frames after it, so
  # end >= start holds even for a row without real frames.
  end_scores = jnp.where(frames[None] >= start[:, None], end_scores, _MASKED * 2)
  end = jnp.argmax(end_scores, axis=-1).astype(jnp.int32)
  score = (jnp.take_along_axis(start_scores, start[:, None], axis=-1)[:, 0]
           + jnp.take_along_axis(end_scores, end[:, None], axis=-1)[:, 0])
  return start, end, score


def _pair_scores(start_log_scores, end_log_scores, frame_mask, max_length=None):
  """[B, F, F] log p_start(s) + log p_end(e), masked to s <= e (< s + max_length) and real frames."""
  s = _masked(start_log_scores, frame_mask)
  e = _masked(end_log_scores, frame_mask)
  f = s.shape[-1]
  idx = jnp.arange(f)
  ok = idx[None, :] >= idx[:, None]  # [s, e]: e >= s
  if max_length is not None:
    ok = ok & (idx[None, :] < idx[:, None] + max_length)
  return jnp.where(ok[None], s[:, :, None] + e[:, None, :], _MASKED * 4)


def joint_decode(start_log_scores, end_log_scores, frame_mask, max_length=None):
  """Arg-max over pairs s <= e of log p_start(s) + log p_end(e) (optionally e - s < max_length).

  Returns (start [B], end [B], log score [B]).
  """
  pairs = _pair_scores(start_log_scores, end_log_scores, frame_mask, max_length)
  f = pairs.shape[-1]
  flat = pairs.reshape(pairs.shape[0], f * f)
  best = jnp.argmax(flat, axis=-1)
  return (best // f).astype(jnp.int32), (best % f).astype(jnp.int32), jnp.max(flat, axis=-1)


def decode(start_log_scores, end_log_scores, frame_mask, method: str = "greedy"):
  """`config.model.decoding`: "greedy" | "joint". Returns (start, end, log score), each [B]."""
  if method == "greedy":
    return greedy_decode(start_log_scores, end_log_scores, frame_mask)
  if method == "joint":
    return joint_decode(start_log_scores, end_log_scores, frame_mask)
  raise ValueError(f"decoding must be 'greedy' or 'joint', got '{method}'")


def top_moments(start_log_scores, end_log_scores, frame_mask, k: int, max_length=None):
  """The k best (s <= e) pairs per row by log p_start + log p_end (for VCMR/SVMR lists).

  Returns (start [B, k], end [B, k], log score [B, k]) sorted best first. Rows
  with fewer than k valid pairs repeat pairs with very negative scores.
  """
  pairs = _pair_scores(start_log_scores, end_log_scores, frame_mask, max_length)
  f = pairs.shape[-1]
  scores, idx = jax.lax.top_k(pairs.reshape(pairs.shape[0], f * f), k)
  return (idx // f).astype(jnp.int32), (idx % f).astype(jnp.int32), scores


def level_spans(frame_log_probs, clip_log_probs, frame_mask, clip_len: int):
  """Figure 5's moments from one level alone, by the same greedy rule.

  Args:
    frame_log_probs: [B, F, 3] B/E/O log-probabilities; clip_log_probs: [B, K, 2]
      start/end clip log-probabilities or None (FLAT); frame_mask: [B, F].
  Returns ((start, end) frames of the frame level, (start, end) frames of the clip
  level: its start clip's first frame to its end clip's last real frame); FLAT's
  clip level is its frame level.
  """
  frame_mask = jnp.asarray(frame_mask)
  frame = greedy_decode(frame_log_probs[..., 0], frame_log_probs[..., 1], frame_mask)[:2]
  if clip_log_probs is None:
    return frame, frame
  clip_mask = jnp.ones(clip_log_probs.shape[:2], jnp.int32)  # padded clips are already very negative
  cs, ce, _ = greedy_decode(clip_log_probs[..., 0], clip_log_probs[..., 1], clip_mask)
  last = jnp.sum(frame_mask > 0, axis=1) - 1
  return frame, (cs * clip_len, jnp.minimum((ce + 1) * clip_len - 1, last))


def corpus_log_probs(scores):
  """log p(v|h): log softmax of f(v, h) over the corpus, float64 numpy. scores: [Q, V] -> [Q, V]."""
  scores = np.asarray(scores, np.float64)
  shifted = scores - scores.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def moment_log_score(log_p_video, start_end_log_score):
  """Eq. 2 in log space: log p(v|h) + log p_start + log p_end (any matching shapes)."""
  return np.asarray(log_p_video, np.float64) + np.asarray(start_end_log_score, np.float64)


def rank_videos(scores):
  """[Q, V] -> [Q, V] corpus positions, best first; ties keep corpus order (stable)."""
  return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


def rank_of(scores, positions):
  """1-based rank of corpus position `positions[q]` in `rank_videos(scores)[q]`: [Q]."""
  scores = np.asarray(scores)
  q = np.arange(scores.shape[0])
  target = scores[q, positions][:, None]
  before = (scores > target) | ((scores == target) & (np.arange(scores.shape[1])[None] < positions[:, None]))
  return 1 + before.sum(axis=1)


def frames_to_seconds(start, end, frame_seconds, duration):
  """Frame indices -> seconds: st = start * delta, ed = (end + 1) * delta, clipped to [0, duration].

  start, end: int [B] or [B, k]; frame_seconds, duration: [B].
  Returns float32 (st, ed) with the shape of start.
  """
  extra = (1,) * (jnp.ndim(start) - 1)
  delta = jnp.reshape(frame_seconds, jnp.shape(frame_seconds) + extra).astype(jnp.float32)
  dur = jnp.reshape(duration, jnp.shape(duration) + extra).astype(jnp.float32)
  st = jnp.clip(start.astype(jnp.float32) * delta, 0.0, dur)
  ed = jnp.clip((end.astype(jnp.float32) + 1.0) * delta, 0.0, dur)
  return st, ed
