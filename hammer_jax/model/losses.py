"""HAMMER's training objectives (paper Eq. 4, 6, 13, 14) on `Hammer.__call__` outputs.

Every term is a weighted mean over examples with `example_mask` as the weight, so
padding examples (eval's last batch) count for nothing. All arithmetic is float32.

  VR (Eq. 4): softmax cross-entropy of the positive video (column 0 of
    `vr_scores`) against the `neg_index` negatives; `neg_mask` = 0 removes a
    negative from the softmax.
  TL (Eq. 6 with Eq. 10-11): per example, CE of the ground-truth start clip
    (B column of `clip_log_probs`) + CE of the end clip (E column) + the
    frame-wise B/E/O CE against `frame_labels`, **summed** over frames as Eq. 6
    writes it (padded frames have zero label rows). FLAT has no clip level.
    Sum (default) keeps the frame term on the clip term's per-event scale: once
    the easy O frames are learnt, it is dominated by the start and end frames,
    like the two clip CEs. `loss.frame_loss_reduction = "mean"` (choice, the
    PyTorch default an implementation may have used) divides it by the number
    of real frames instead.
  MLM (Eq. 13): CE at the masked positions weighted by `mlm_weights`,
    normalised by the sum of weights (BERT). Frame level: Phi gives one
    prediction per clip; the per-clip CEs are averaged over the example's real
    clips (choice: every clip saw the same masked query, none is privileged).
    MLM = frame MLM + clip MLM (each switchable; Table 4's FM and CM).
  Dual encoder (not in the paper; `loss.use_dual_encoder`, dual_encoder.py):
    in-batch InfoNCE of each query against every video of the (global) batch.
  Total (Eq. 14): vr_weight * VR + tl_weight * TL + mlm_weight * MLM
    (+ dual_encoder_weight * dual encoder when on).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = Any


def _weighted_mean(values, weights):
  """sum(w * v) / max(sum(w), tiny): 0 when every weight is 0."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def vr_loss(vr_scores, neg_mask, example_weights):
  """Eq. 4.

  Args:
    vr_scores: [B, 1+J] f(v, h); column 0 the positive video.
    neg_mask: [B, J] 1 for a real negative (0 excludes it from the softmax).
    example_weights: [B].
  Returns: scalar, mean over examples of -log softmax(vr_scores)[:, 0].
  """
  vr_scores = vr_scores.astype(jnp.float32)
  keep = jnp.concatenate([jnp.ones_like(vr_scores[:, :1], bool), neg_mask[:, : vr_scores.shape[1] - 1] > 0],
                         axis=1)
  logits = jnp.where(keep, vr_scores, -jnp.inf)  # -inf: excluded entries weigh exactly 0.
  nll = -jax.nn.log_softmax(logits, axis=-1)[:, 0]
  return _weighted_mean(nll, example_weights)


def tl_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], example_weights,
            frame_reduction: str = "sum"):
  """Eq. 6 (+ Eq. 10-11). Returns (scalar TL, {"tl_clip": ..., "tl_frame": ...}).

  frame_reduction: "sum" over frames (Eq. 6) or "mean" over real frames.

  outputs: "frame_log_probs" [B, F, 3] (B/E/O), and for HAMMER "clip_log_probs"
    [B, K, 2] (start-clip, end-clip log softmax over clips).
  batch: "frame_labels" [B, F, 3], "start_clip", "end_clip" [B].
  """
  labels = batch["frame_labels"].astype(jnp.float32)
  frame_ce = -jnp.sum(labels * outputs["frame_log_probs"].astype(jnp.float32), axis=(1, 2))  # [B]
  if frame_reduction == "mean":
    frame_ce = frame_ce / jnp.maximum(jnp.sum(labels, axis=(1, 2)), 1.0)  # label rows sum to 1 on real frames
  elif frame_reduction != "sum":
    raise ValueError(f"frame_loss_reduction must be 'sum' or 'mean', got '{frame_reduction}'")
  terms = {"tl_frame": _weighted_mean(frame_ce, example_weights)}
  per_example = frame_ce
  if "clip_log_probs" in outputs:
    clip_lp = outputs["clip_log_probs"].astype(jnp.float32)
    start = jnp.take_along_axis(clip_lp[..., 0], batch["start_clip"][:, None].astype(jnp.int32), axis=1)[:, 0]
    end = jnp.take_along_axis(clip_lp[..., 1], batch["end_clip"][:, None].astype(jnp.int32), axis=1)[:, 0]
    clip_ce = -(start + end)
    terms["tl_clip"] = _weighted_mean(clip_ce, example_weights)
    per_example = per_example + clip_ce
  return _weighted_mean(per_example, example_weights), terms


def mlm_loss(logits, targets, weights, example_weights, clip_mask=None):
  """Eq. 13 at the masked positions.

  Args:
    logits: [B, P, V] (clip level) or [B, K, P, V] (frame level, one per clip).
    targets: int [B, P]; weights: [B, P] (mlm_weights); example_weights: [B].
    clip_mask: [B, K] real clips (needed with per-clip logits).
  Returns: scalar, sum(w * CE) / sum(w) with w = mlm_weights * example weight.
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if logits.ndim == 4:
    tgt = jnp.broadcast_to(targets[:, None, :], logits.shape[:3])
    ce = -jnp.take_along_axis(log_probs, tgt[..., None].astype(jnp.int32), axis=-1)[..., 0]  # [B, K, P]
    if clip_mask is None:
      clip_mask = jnp.ones(ce.shape[:2], jnp.float32)
    cm = clip_mask.astype(jnp.float32)[..., None]
    ce = jnp.sum(ce * cm, axis=1) / jnp.maximum(jnp.sum(cm, axis=1), 1.0)           # [B, P]
  else:
    ce = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  w = weights.astype(jnp.float32) * example_weights.astype(jnp.float32)[:, None]
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-9)


def dual_encoder_loss(query_embedding, clip_embeddings, clip_mask, video_index, example_weights, scale):
  """In-batch InfoNCE, query -> video, a video's score the max over its real clips.

  Args:
    query_embedding: [B, e]; clip_embeddings: [B, K, e] (unit vectors); clip_mask: [B, K].
    video_index: [B] video of each row: other rows of the query's own video are
      left out of its softmax (they are positives too, not negatives).
    example_weights: [B] (0 rows are neither queries nor candidates).
    scale: scalar logit scale.
  Under jit over a global batch sharded across devices and hosts, the [B, B]
  similarity spans every video of the global batch (XLA gathers the clip vectors).
  Returns: scalar, weighted mean over queries of -log softmax(s)[own video].
  """
  sim = jnp.einsum("qe,vke->qvk", query_embedding.astype(jnp.float32), clip_embeddings.astype(jnp.float32))
  sim = jnp.max(jnp.where(clip_mask[None] > 0, sim, -1.0), axis=-1) * scale          # [B, B]
  b = sim.shape[0]
  own = jnp.eye(b, dtype=bool)
  same_video = (video_index[:, None] == video_index[None, :]) & ~own
  keep = own | ((example_weights[None, :] > 0) & ~same_video)
  nll = -jnp.diagonal(jax.nn.log_softmax(jnp.where(keep, sim, -jnp.inf), axis=-1))
  return _weighted_mean(nll, example_weights)


def hammer_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], loss_config):
  """Eq. 14. `loss_config` is `config.loss` (weights and use_* switches).

  Returns (total scalar, {"total", "vr", "tl", "tl_clip", "tl_frame", "mlm",
  "frame_mlm", "clip_mlm", "dual_encoder"} with the terms that are on). A switched-on term whose
  output the model does not produce (e.g. clip MLM in FLAT) is left out.
  """
  example_weights = batch.get("example_mask")
  if example_weights is None:
    example_weights = jnp.ones(batch["query_ids"].shape[:1], jnp.float32)
  example_weights = example_weights.astype(jnp.float32)
  total = jnp.float32(0.0)
  terms = {}
  if loss_config.use_vr:
    neg_mask = outputs.get("neg_mask", batch.get("neg_mask"))  # the model's when it mined hard negatives
    if neg_mask is None:
      neg_mask = jnp.zeros((example_weights.shape[0], outputs["vr_scores"].shape[1] - 1), jnp.float32)
    terms["vr"] = vr_loss(outputs["vr_scores"], neg_mask, example_weights)
    total = total + loss_config.vr_weight * terms["vr"]
  if loss_config.use_tl:
    terms["tl"], parts = tl_loss(outputs, batch, example_weights,
                                 loss_config.frame_loss_reduction)
    terms.update(parts)
    total = total + loss_config.tl_weight * terms["tl"]
  if loss_config.use_dual_encoder and "query_embedding" in outputs:
    terms["dual_encoder"] = dual_encoder_loss(outputs["query_embedding"], outputs["clip_embeddings"],
                                              outputs["embedding_clip_mask"], batch["video_index"],
                                              example_weights, outputs["embedding_scale"])
    total = total + loss_config.dual_encoder_weight * terms["dual_encoder"]
  mlm_terms = []
  if loss_config.use_frame_mlm and "frame_mlm_logits" in outputs:
    terms["frame_mlm"] = mlm_loss(outputs["frame_mlm_logits"], batch["mlm_targets"], batch["mlm_weights"],
                                  example_weights, outputs.get("clip_mask"))
    mlm_terms.append(terms["frame_mlm"])
  if loss_config.use_clip_mlm and "clip_mlm_logits" in outputs:
    terms["clip_mlm"] = mlm_loss(outputs["clip_mlm_logits"], batch["mlm_targets"], batch["mlm_weights"],
                                 example_weights)
    mlm_terms.append(terms["clip_mlm"])
  if mlm_terms:
    terms["mlm"] = sum(mlm_terms[1:], mlm_terms[0])
    total = total + loss_config.mlm_weight * terms["mlm"]
  terms["total"] = total
  return total, terms
