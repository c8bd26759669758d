"""The dual-encoder (first-stage) head: a query vector and one vector per clip, no cross-modal layer.

HAMMER scores a (query, video) pair with a cross-encoder (Eq. 9): every pair
needs its own pass through the cross-modal layers. This head reads only the
query-only part (`Hammer.encode_query`) and the video-only part
(`Hammer.encode_video`) of the same model, so a corpus's clip vectors can be
computed once and searched by inner product (two-stage retrieval), and it is
trained as one more objective (`losses.dual_encoder_loss`, config
`loss.use_dual_encoder`; off in the paper configs, whose model then has no
such parameters).

  query vector  = normalise(Dense(masked mean of Phi's text-branch tokens))
  clip vector k = normalise(Dense([CCLS_k outputs of Phi's video branches]))
  s(h, v)       = scale * max_k <query vector, clip vector k>

Choices, each with its reason:
  * mean of the text tokens, not TCLS: all-MiniLM-L6-v2 is trained for mean
    pooling and its [CLS] output hardly varies across queries (cosine 0.9996
    between different queries, measured on the demo corpus);
  * the CCLS outputs of Phi's video branches (one per clip and modality,
    concatenated): video-only, and the tokens that already summarise a clip;
  * cosine with a learned scale (CLIP's parameterisation, initial 1/0.07,
    capped at 100), so the vectors can go into an inner-product index as they are.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_LOGIT_SCALE = 100.0


def _normalise(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class DualEncoderHead(nn.Module):
  """Projections of the query-only and video-only parts into one `dim`-wide space."""
  dim: int

  def setup(self):
    self.query_projection = nn.Dense(self.dim, dtype=jnp.float32, name="query_projection")
    self.clip_projection = nn.Dense(self.dim, dtype=jnp.float32, name="clip_projection")
    self.log_scale = self.param("log_scale", lambda _: jnp.log(jnp.float32(1 / 0.07)))

  def embed_query(self, text_tokens, query_mask):
    """text_tokens: [B, L, d] Phi's text-branch output, query_mask: [B, L] -> unit vectors [B, dim]."""
    mask = query_mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(text_tokens.astype(jnp.float32) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return _normalise(self.query_projection(pooled))

  def embed_clips(self, ccls):
    """ccls: [B, K, n_modalities * d] CCLS outputs of Phi's video branches -> unit vectors [B, K, dim]."""
    return _normalise(self.clip_projection(ccls.astype(jnp.float32)))

  def scale(self):
    """The logit scale applied to cosines in the loss (a scalar)."""
    return jnp.minimum(jnp.exp(self.log_scale), MAX_LOGIT_SCALE)


def hardest_negatives(query_embedding, clip_embeddings, clip_mask, video_index, example_mask, num_negatives: int):
  """VR negatives mined by the first stage (HERO / CONQUER-style hard negatives, within the batch).

  For each query, the `num_negatives` examples of the (global) batch whose video
  the dual encoder scores highest, among those of another video. No gradient
  flows through the choice.

  Args:
    query_embedding: [B, e]; clip_embeddings: [B, K, e]; clip_mask: [B, K];
    video_index: [B]; example_mask: [B] (0 rows are never chosen).
  Returns: neg_index int32 [B, J] (batch rows), neg_mask float32 [B, J] (0 where
    the batch has fewer than J candidates).
  """
  q = jax.lax.stop_gradient(query_embedding.astype(jnp.float32))
  c = jax.lax.stop_gradient(clip_embeddings.astype(jnp.float32))
  sim = jnp.max(jnp.where(clip_mask[None] > 0, jnp.einsum("qe,vke->qvk", q, c), -2.0), axis=-1)  # [B, B]
  allowed = (video_index[:, None] != video_index[None, :]) & (example_mask[None, :] > 0)
  k = min(num_negatives, sim.shape[1])  # a batch smaller than J (initialisation's dummy batch)
  values, index = jax.lax.top_k(jnp.where(allowed, sim, -jnp.inf), k)
  pad = ((0, 0), (0, num_negatives - k))
  return (jnp.pad(index.astype(jnp.int32), pad),
          jnp.pad(jnp.isfinite(values).astype(jnp.float32), pad))
