"""Analytic model FLOPs of HAMMER / FLAT, per training example.

Counts the matrix multiplications the implementation performs (2 FLOPs per
multiply-add): dense layers, attention scores and attention-weighted values, the
MLM decoder against the vocabulary. Element-wise work (LayerNorm, softmax, GELU,
residual adds) and gathers are left out, the usual convention for model-FLOPs
utilisation; on the tiny test config that is a few percent of what XLA's
`cost_analysis` reports (tests/test_model.py checks within 15%).

It follows `Hammer.__call__` exactly, including what the code computes but a
minimal model would not: frames padded to K*M, the query repeated for each clip
in Phi's cross-attention (keys/values projected per clip), every clip of every
pair. Per training example (one query):

  query:     the text branch(es): 1 (shared encoders or FLAT) or 2 x text_layers
  video:     Phi's input projections + video layers over K clips of 1+M tokens
             (each batch video is encoded once; one video per example)
  positive:  the full pair (both halves of both co-attention layers, Psi, heads)
  negatives: J retrieval-only pairs (video half of the co-attention layers, Psi's
             video side, the VR head) when VR is on
  mlm:       P positions x (K frame-level + 1 clip-level) MLM heads

A training step is counted as 3x the forward (backward ~ 2x forward).
"""

from __future__ import annotations

import math

from hammer_jax.model.build import model_config
from hammer_jax.model.hammer import ModelConfig


def _layer(d: int, ff: int, tokens: int, context: int) -> int:
  """One BertLayer: `tokens` queries attending to `context` keys/values, then the FFN."""
  projections = 2 * d * d * (2 * tokens + 2 * context)   # Q, out for tokens; K, V for context.
  attention = 2 * 2 * tokens * context * d                # scores and weighted values.
  ffn = 2 * 2 * tokens * d * ff
  return projections + attention + ffn


def forward_flops(cfg: ModelConfig, *, num_frames: int, query_len: int, num_negatives: int,
                  mlm_predictions: int) -> dict[str, float]:
  """FLOPs of `Hammer.__call__` per example, by part, and the step total.

  Args:
    cfg: the model's ModelConfig.
    num_frames: F of the batch (padded frames count: the model computes them).
    query_len: L of the batch.
    num_negatives: J (ignored when cfg.with_negatives is off).
    mlm_predictions: P.
  Returns:
    {"query", "video", "positive", "negatives", "mlm", "forward", "train_step"}.
  """
  d, ff, v = cfg.bert.hidden_size, cfg.bert.intermediate_size, cfg.bert.vocab_size
  n = len(cfg.modalities)
  in_dims = [cfg.video_dim] + ([cfg.subtitle_dim] if cfg.subtitle_dim > 0 else [])
  length = query_len
  m = num_frames if cfg.flat else cfg.clip_len
  k = math.ceil(num_frames / m)
  t = m + 1  # CCLS + frames

  text_branches = 1 if (cfg.flat or cfg.share_encoders) else 2
  query = text_branches * cfg.text_layers * _layer(d, ff, length, length)

  video = sum(2 * k * m * dim * d for dim in in_dims) + n * cfg.video_layers * k * _layer(d, ff, t, t)

  def pair(full: bool) -> int:
    total = 0
    if cfg.cross_modal:
      total += n * k * _layer(d, ff, t, length)            # Phi: video attends to text
      if full:
        total += n * k * _layer(d, ff, length, t)          # Phi: text attends to video
    if cfg.flat:
      total += 2 * n * d                                   # theta . CCLS
    else:
      total += n * 2 * k * d * d                           # Psi input projections
      total += n * cfg.video_layers * _layer(d, ff, k, k)  # Psi video layers
      if cfg.cross_modal:
        total += n * _layer(d, ff, k, length)
        if full:
          total += n * _layer(d, ff, length, k)
      total += 2 * k * n * d                               # theta . Psi(phi_k)
      if full:
        total += 2 * k * (n + 1) * d * 2                   # u_B, u_E
    if full:
      total += 2 * k * m * (n + 1) * d * 3                 # W (B/E/O)
    return total

  positive = pair(True)
  negatives = num_negatives * pair(False) if cfg.with_negatives else 0
  per_head = 2 * d * d + 2 * d * v                          # transform + tied decoder
  mlm = 0
  if cfg.frame_mlm:
    mlm += k * mlm_predictions * per_head
  if cfg.clip_mlm and not cfg.flat:
    mlm += mlm_predictions * per_head
  forward = query + video + positive + negatives + mlm
  return {"query": float(query), "video": float(video), "positive": float(positive),
          "negatives": float(negatives), "mlm": float(mlm), "forward": float(forward),
          "train_step": 3.0 * forward}


def flops_per_example(config, video_dim: int, subtitle_dim: int = 0) -> dict[str, float]:
  """`forward_flops` for the ml_collections config at its data shapes (max_frames, max_query_len)."""
  cfg = model_config(config, video_dim, subtitle_dim)
  return forward_flops(cfg, num_frames=config.data.max_frames, query_len=config.data.max_query_len,
                       num_negatives=config.data.num_negatives,
                       mlm_predictions=config.data.max_mlm_predictions)
