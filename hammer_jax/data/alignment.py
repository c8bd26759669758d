"""How annotations meet features: seconds -> frames, and queries cut to the model's length.

One implementation of each rule, written against a numpy-like namespace `xp` so
that the TF input pipeline (`xp = tf.experimental.numpy`, inside tf.data), the
host-side evaluation batches and the data preparation (`xp = numpy`) apply
exactly the same arithmetic.

  seconds -> frames: one frame covers [t * delta, (t + 1) * delta) seconds, so a
    moment [st, ed] covers frames floor(st / delta) .. ceil(ed / delta) - 1, both
    clamped into [0, n - 1] and end >= start (a moment is at least one frame).
  query truncation: a tokenised query longer than L keeps its first L - 1 tokens
    and its last one, the [SEP] (what BERT's own truncation does).
"""

from __future__ import annotations

import numpy as np


def seconds_to_frames(st, ed, frame_seconds, n_frames, xp=np):
  """[st, ed] seconds -> (start, end) frame indices (as floats of `xp`; cast them).

  st, ed, frame_seconds: scalars or arrays of one shape; n_frames: real frames
  of the video (>= 1), the same shape or scalar.
  """
  last = n_frames - 1
  start = xp.clip(xp.floor(st / frame_seconds), 0, last)
  end = xp.clip(xp.ceil(ed / frame_seconds) - 1, 0, last)
  return start, xp.maximum(end, start)


def truncate_query(token_ids, max_len: int, xp=np):
  """[n] token ids -> at most `max_len` of them, keeping the last ([SEP]) when cut."""
  n = xp.size(token_ids)
  keep = xp.minimum(n, max_len)
  return xp.concatenate([token_ids[:keep - 1], token_ids[n - 1:n]], axis=0)
