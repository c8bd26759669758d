"""What each training batch draws on the host: BERT's MLM masking and the VR negatives.

Both are numpy functions of a generator the pipeline seeds with (seed, step,
process), so a resumed run draws exactly what it would have drawn.
"""

from __future__ import annotations

import numpy as np


def mask_tokens(ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator, spec,
                special: dict[str, int], vocab_size: int) -> dict[str, np.ndarray]:
  """BERT masking of `[B, L]` queries: ~15% of real tokens, 80/10/10, at most P per query.

  `spec`: the pipeline's PipelineSpec (mlm_probability, max_mlm_predictions).
  Returns the masked `query_ids` and `mlm_positions`, `mlm_targets`, `mlm_weights` `[B, P]`.
  """
  b, _ = ids.shape
  p = spec.max_mlm_predictions
  out = ids.copy()
  positions = np.zeros((b, p), np.int32)
  targets = np.zeros((b, p), np.int32)
  weights = np.zeros((b, p), np.float32)
  never = np.isin(ids, [special["cls"], special["sep"], special["pad"]]) | (mask == 0)
  for i in range(b):
    cand = np.flatnonzero(~never[i])
    if cand.size == 0:
      continue
    k = min(p, max(1, int(round(cand.size * spec.mlm_probability))))
    chosen = np.sort(rng.choice(cand, size=k, replace=False))
    positions[i, :k], targets[i, :k], weights[i, :k] = chosen, ids[i, chosen], 1.0
    roll = rng.random(k)
    out[i, chosen[roll < 0.8]] = special["mask"]
    rand = chosen[(roll >= 0.8) & (roll < 0.9)]
    out[i, rand] = rng.integers(0, vocab_size, size=rand.size)
  return {"query_ids": out, "mlm_positions": positions, "mlm_targets": targets, "mlm_weights": weights}


def sample_negatives(video_index: np.ndarray, num_negatives: int, rng: np.random.Generator,
                     offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """For each example, `num_negatives` other examples of the batch with a different video.

  Returns `neg_index` `[B, N]` (global rows: local + offset) and `neg_mask` `[B, N]`;
  when the batch has too few other videos, slots repeat or are masked out.
  """
  b = video_index.shape[0]
  index = np.zeros((b, num_negatives), np.int32)
  valid = np.zeros((b, num_negatives), np.float32)
  for i in range(b):
    cand = np.flatnonzero(video_index != video_index[i])
    if cand.size == 0 or num_negatives == 0:
      index[i] = i + offset
      continue
    pick = rng.choice(cand, size=num_negatives, replace=cand.size < num_negatives)
    index[i], valid[i] = pick + offset, 1.0
  return index, valid
