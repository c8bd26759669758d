"""The HAMMER model (and its FLAT baseline) and its split forward (construction: build.py).

`Hammer` (paper 3.3-3.4, supplement 6.1.3; readings fixed in
docs/paper_notes.md):

  * one `BertEmbeddings` (the word table is shared by both text branches and the
    MLM head);
  * the frame encoder Phi: per clip, video tokens `[CCLS; frames of clip k]`,
    one stream per modality, a `HierarchicalEncoder` (encoders.py);
  * the clip encoder Psi: video tokens `phi_1 .. phi_K` (one stream per
    modality, fed by that modality's CCLS outputs) + clip position embedding;
  * heads: VR `theta` (Eq. 9), clip-level TL `u_B, u_E` (Eq. 11), frame-level
    B/E/O `W` (Eq. 12), MLM (Eq. 13).

FLAT (`flat=True`): the frame encoder alone over the whole video as one clip; VR
from its CCLS output, TL from the frame-level B/E/O head only, frame MLM only.

The forward is split so evaluation can cache each side of the cross encoder:

  params = init_params(model, config, rng, batch)
  q = model.apply(params, ids, mask, method=Hammer.encode_query)            # query only
  v = model.apply(params, video, subtitle, frame_mask, method=Hammer.encode_video)  # video only
  out = model.apply(params, q_pairs, v_pairs, method=Hammer.score_pairs)    # per pair

`__call__(batch)` is the training forward: every query and every video of the
batch is encoded once, then each query is paired with its positive video and,
for VR, with its `neg_index` negatives.

Log-scores of padded frames/clips are `NEG_INF` (finite, so sums stay finite).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from hammer_jax.model.bert import BertEmbeddings, BertMLMHead
from hammer_jax.model.dual_encoder import DualEncoderHead, hardest_negatives
from hammer_jax.model.encoders import SUBTITLE, VISUAL, HierarchicalEncoder, VideoInput
from hammer_jax.model.model_config import DTYPES as _DTYPES
from hammer_jax.model.model_config import ModelConfig

NEG_INF = -1e9  # "log 0" for padded frames/clips; finite so that adding two stays finite.

def gather_pairs(query_parts, video_parts, query_rows, video_rows):
  """(query, video) pairs for `score_pairs`: pair i is query `query_rows[i]` with video `video_rows[i]`.

  The one way queries meet videos: training's negatives (each query with its J
  negatives), corpus blocks (every query of a block with every video of a block)
  and search (one query with many videos) all pair through it.
  query_parts / video_parts: `encode_query` / `encode_video` outputs; rows: int [N].
  Returns (query parts, video parts), each with leading dim N.
  """
  take = lambda rows: (lambda x: jnp.take(x, rows, axis=0))
  return (jax.tree_util.tree_map(take(query_rows), query_parts),
          jax.tree_util.tree_map(take(video_rows), video_parts))


def clip_mask_of(frame_mask, num_clips: int, clip_len: int):
  """[N, F] frame mask -> int32 [N, K]: 1 on clips holding at least one real frame."""
  n, f = frame_mask.shape
  padded = jnp.pad(frame_mask, ((0, 0), (0, num_clips * clip_len - f))).reshape(n, num_clips, clip_len)
  return jnp.any(padded > 0, axis=-1).astype(jnp.int32)


def _tile_modalities(text_vec, n: int):
  """[..., d] -> [..., n*d]: the query vector repeated once per modality block."""
  return jnp.concatenate([text_vec] * n, axis=-1) if n > 1 else text_vec


class Hammer(nn.Module):
  """HAMMER / FLAT. See the module docstring; all methods take `deterministic`."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    bert = cfg.bert
    dt = _DTYPES[cfg.dtype]
    self.embeddings = BertEmbeddings(bert, dt, jnp.float32)
    new = dataclasses.replace(bert, initializer_range=cfg.new_layer_init_std or bert.hidden_size ** -0.5)
    encoder = lambda: HierarchicalEncoder(bert, cfg.text_layers, cfg.video_layers, cfg.modalities,
                                          cfg.cross_modal, dt, jnp.float32, new_layer_config=new)
    # Frame position table: CCLS takes row 0, frame j of a clip row j+1 (in-clip,
    # the docs/paper_notes.md choice) or frame t row t+1 (absolute). FLAT's one clip is the
    # whole video, so in-clip and absolute coincide.
    if cfg.flat:
      frame_positions = cfg.max_frames + 1
    elif cfg.frame_position == "absolute":
      frame_positions = cfg.max_clips * cfg.clip_len + 1  # Frames are padded to whole clips.
    else:
      frame_positions = cfg.clip_len + 1
    self.frame_input = {m: VideoInput(new, frame_positions, True, dt, jnp.float32) for m in cfg.modalities}
    self.frame_encoder = encoder()
    if not cfg.flat:
      clip_positions = cfg.max_clips if cfg.clip_position_embedding else 0
      # Psi's input projections (d -> d) are its own even with share_encoders: Phi's
      # project D_in-dim features, so they cannot be the same matrices.
      self.clip_input = {m: VideoInput(new, clip_positions, False, dt, jnp.float32) for m in cfg.modalities}
      if not cfg.share_encoders:
        self.clip_encoder = encoder()
      # Eq. 11: u_B and u_E as the two columns of one Dense. No bias: a bias is the
      # same for every clip and cancels in the softmax over clips (it would get no gradient).
      self.clip_head = nn.Dense(2, use_bias=False, dtype=jnp.float32, name="clip_head")
    # theta_VR, Eq. 9. No bias: it would cancel in the softmax over videos (Eq. 4).
    self.vr_head = nn.Dense(1, use_bias=False, dtype=jnp.float32, name="vr_head")
    # W for B/E/O, Eq. 12. The bias (a per-class prior) does not cancel over classes.
    self.frame_head = nn.Dense(3, dtype=jnp.float32, name="frame_head")
    self.mlm_head = BertMLMHead(bert, dt, jnp.float32)
    if cfg.dual_encoder_dim:
      self.dual_encoder = DualEncoderHead(cfg.dual_encoder_dim)

  # -- helpers ---------------------------------------------------------------

  def _psi(self) -> HierarchicalEncoder:
    # Table 8: with sharing, Psi *is* Phi's encoder body (text branch, video layers,
    # cross-modal layers); only the VideoInputs differ.
    return self.frame_encoder if self.config.share_encoders else self.clip_encoder

  def _clip_len(self, num_frames: int) -> int:
    return num_frames if self.config.flat else self.config.clip_len

  def _late_interaction(self, video_feat, text_cls):
    """Without the cross-modal layer (Table 6) nothing query-dependent reaches the video
    features, so the heads see `video * query` instead (choice): an element-wise
    product with the text CLS, repeated per modality block. This is the usual
    dual-encoder late interaction (theta . (a * b) is a weighted dot product), and
    it keeps clip/frame softmaxes query-dependent (the [., TCLS] half of Eq. 11 is
    constant over clips and cancels in the softmax).
    video_feat [..., n*d], text_cls broadcastable [..., d] -> [..., n*d]."""
    if self.config.cross_modal:
      return video_feat
    return video_feat * _tile_modalities(text_cls, len(self.config.modalities))

  def _first_stage_clip_scores(self, query_parts, video_parts):
    """[N, K] scale * cos(query vector, clip vector k) of the dual-encoder head, pairwise.

    With `vr_first_stage_residual` the cross-encoder's clip scores are this plus
    theta . Psi(phi_k) (not in the paper): VR starts from the word-level match the
    first stage learns quickly, and the cross-modal layers learn what it misses.
    """
    q = self.embed_query(query_parts)                                             # [N, e]
    c, _ = self.embed_clips(video_parts)                                          # [N, K, e]
    return jnp.einsum("ne,nke->nk", q, c) * self.dual_encoder.scale()

  # -- split forward ---------------------------------------------------------

  def encode_query(self, query_ids, query_mask, deterministic: bool = True) -> dict:
    """Query-only part: the text branches of Phi and Psi.

    Args:
      query_ids, query_mask: int [B, L].
    Returns:
      {"frame_text": [B, L, d] Phi's text-branch output,
       "clip_text": [B, L, d] Psi's (HAMMER only; equal to frame_text when shared),
       "query_mask": [B, L]}.
    """
    if query_ids.shape[-1] > self.config.bert.max_position_embeddings:
      raise ValueError(f"{query_ids.shape[-1]} query tokens exceed the text position table")
    # Both text branches read the same embeddings (Psi does not read Phi's text outputs).
    x = self.embeddings(query_ids, deterministic=deterministic)
    frame_text = self.frame_encoder.encode_text(x, query_mask, deterministic=deterministic)
    parts = {"frame_text": frame_text, "query_mask": query_mask}
    if not self.config.flat:
      parts["clip_text"] = (frame_text if self.config.share_encoders
                            else self.clip_encoder.encode_text(x, query_mask, deterministic=deterministic))
    return parts

  def encode_video(self, video, subtitle, frame_mask, deterministic: bool = True) -> dict:
    """Video-only part: Phi's video branches, per clip.

    Args:
      video: [B, F, video_dim]; subtitle: [B, F, subtitle_dim] or None (needed
        iff the model has a subtitle stream); frame_mask: int [B, F].
    Returns:
      {"tokens": [B, n_modalities, K, 1+M, d] video-branch outputs of
         `[CCLS; frames of clip k]` (F zero-padded to K*M),
       "frame_mask": [B, F] as given}.
    """
    cfg = self.config
    b, f = frame_mask.shape
    if f > cfg.max_frames:
      raise ValueError(f"{f} frames exceed max_frames={cfg.max_frames}")
    m = self._clip_len(f)
    k = math.ceil(f / m)
    streams = {VISUAL: video}
    if SUBTITLE in cfg.modalities:
      if subtitle is None:
        raise ValueError("the model has a subtitle stream but no subtitle features were given")
      streams[SUBTITLE] = subtitle
    mask = jnp.pad(frame_mask, ((0, 0), (0, k * m - f))).reshape(b * k, m)
    token_mask = jnp.concatenate([jnp.ones((b * k, 1), mask.dtype), mask], axis=1)  # CCLS always valid.
    if cfg.frame_position == "absolute" and not cfg.flat:
      frame_pos = 1 + jnp.arange(k * m).reshape(k, m)                       # [K, M]
      positions = jnp.concatenate([jnp.zeros((k, 1), jnp.int32), frame_pos], axis=1)
      positions = jnp.broadcast_to(positions[None], (b, k, m + 1)).reshape(b * k, m + 1)
    else:
      positions = jnp.arange(m + 1)
    tokens = {}
    for name in cfg.modalities:
      x = streams[name]
      x = jnp.pad(x, ((0, 0), (0, k * m - f), (0, 0))).reshape(b * k, m, x.shape[-1])
      tokens[name] = self.frame_input[name](x, positions, deterministic=deterministic)
    out = self.frame_encoder.encode_video(tokens, token_mask, deterministic=deterministic)
    stacked = jnp.stack([out[name].reshape(b, k, m + 1, -1) for name in cfg.modalities], axis=1)
    return {"tokens": stacked, "frame_mask": frame_mask}

  def score_pairs(self, query_parts: Mapping[str, Any], video_parts: Mapping[str, Any],
                  deterministic: bool = True, retrieval_only: bool = False) -> dict:
    """Everything that depends on a (query, video) pair; leading dims aligned pairwise.

    Args:
      query_parts: `encode_query` output with leading dim N.
      video_parts: `encode_video` output with leading dim N.
      retrieval_only: compute only the VR score (skips the text half of the
        cross-modal layers and the TL heads).
    Returns a dict (F frames, K clips, L tokens, d hidden):
      "vr_score": [N] f(v, h) (Eq. 9; FLAT: theta . CCLS),
      "clip_mask": [N, K] 1 on clips with a real frame,
      and unless retrieval_only:
      "start_log_scores", "end_log_scores": [N, F] log p_start / log p_end per
        frame (HAMMER: log p_B(clip) + log p(B | frame), Eq. 10), NEG_INF on padding,
      "frame_log_probs": [N, F, 3] log softmax over B/E/O (Eq. 12), 0 on padding,
      "frame_text": [N, K, L, d] Phi's per-clip text outputs (frame MLM),
      HAMMER only: "clip_log_probs": [N, K, 2] log softmax over clips of the
        B (column 0) and E (column 1) clip scores (Eq. 11), NEG_INF on padded
        clips; "clip_text": [N, L, d] Psi's text outputs (clip MLM).
    """
    cfg = self.config
    tokens = video_parts["tokens"]
    n, _, k, t, d = tokens.shape
    m = t - 1
    frame_mask = video_parts["frame_mask"]
    f = frame_mask.shape[1]
    clip_frame_mask = jnp.pad(frame_mask, ((0, 0), (0, k * m - f))).reshape(n, k, m)
    clip_mask = clip_mask_of(frame_mask, k, m)                                    # [N, K]
    token_mask = jnp.concatenate([jnp.ones((n, k, 1), clip_frame_mask.dtype), clip_frame_mask],
                                 axis=-1).reshape(n * k, t)

    # Phi's cross-modal layer, every clip of every pair at once: the query is
    # repeated per clip so each clip attends only to its own frames.
    query_mask = query_parts["query_mask"]
    frame_text_in = query_parts["frame_text"]
    text = jnp.repeat(frame_text_in, k, axis=0)                                   # [N*K, L, d]
    text_mask = jnp.repeat(query_mask, k, axis=0)
    video = {name: tokens[:, i].reshape(n * k, t, d) for i, name in enumerate(cfg.modalities)}
    text_out, video_out = self.frame_encoder.fuse(text, text_mask, video, token_mask,
                                                  deterministic=deterministic, text_side=not retrieval_only)
    phi = {name: video_out[name][:, 0].reshape(n, k, d) for name in cfg.modalities}  # phi_k, Eq. 7
    out = {"clip_mask": clip_mask}

    if cfg.flat:
      ccls = jnp.concatenate([phi[name][:, 0] for name in cfg.modalities], axis=-1)  # [N, n*d]
      vr_feat = self._late_interaction(ccls.astype(jnp.float32), frame_text_in[:, 0].astype(jnp.float32))
      out["vr_score"] = self.vr_head(vr_feat)[:, 0]
    else:
      psi_enc = self._psi()
      clip_tokens = {name: self.clip_input[name](phi[name], jnp.arange(k), deterministic=deterministic)
                     for name in cfg.modalities}
      clip_video = psi_enc.encode_video(clip_tokens, clip_mask, deterministic=deterministic)
      clip_text_in = query_parts["clip_text"]
      clip_text_out, clip_video_out = psi_enc.fuse(clip_text_in, query_mask, clip_video, clip_mask,
                                                   deterministic=deterministic, text_side=not retrieval_only)
      psi = jnp.concatenate([clip_video_out[name] for name in cfg.modalities], axis=-1).astype(jnp.float32)
      psi_tcls = (clip_text_in if retrieval_only else clip_text_out)[:, 0].astype(jnp.float32)  # [N, d]
      psi_feat = self._late_interaction(psi, psi_tcls[:, None])                   # [N, K, n*d]
      clip_scores = self.vr_head(psi_feat)[..., 0]                                # [N, K]
      if cfg.vr_first_stage_residual:
        clip_scores = clip_scores + self._first_stage_clip_scores(query_parts, video_parts)
      # Eq. 9: the best clip's score, over real clips only.
      out["vr_score"] = jnp.max(jnp.where(clip_mask > 0, clip_scores, NEG_INF), axis=-1)
      if not retrieval_only:
        clip_in = jnp.concatenate([psi_feat, jnp.broadcast_to(psi_tcls[:, None], (n, k, d))], axis=-1)
        clip_logits = self.clip_head(clip_in)                                     # [N, K, 2]
        clip_logits = jnp.where(clip_mask[..., None] > 0, clip_logits, NEG_INF)
        out["clip_log_probs"] = jnp.where(clip_mask[..., None] > 0, jax.nn.log_softmax(clip_logits, axis=1),
                                          NEG_INF)
        out["clip_text"] = clip_text_out

    if retrieval_only:
      return out

    # Frame level (Eq. 12): [Phi(x_t; c_k), Phi(TCLS; c_k)] -> B/E/O.
    frames = jnp.concatenate([video_out[name][:, 1:].reshape(n, k, m, d) for name in cfg.modalities],
                             axis=-1).astype(jnp.float32)                         # [N, K, M, n*d]
    text_out = text_out.reshape(n, k, -1, d)
    phi_tcls = text_out[:, :, 0].astype(jnp.float32)                              # [N, K, d]
    frame_feat = self._late_interaction(frames, phi_tcls[:, :, None])
    frame_in = jnp.concatenate([frame_feat, jnp.broadcast_to(phi_tcls[:, :, None], (n, k, m, d))], axis=-1)
    frame_log_probs = jax.nn.log_softmax(self.frame_head(frame_in), axis=-1)      # [N, K, M, 3]
    start = frame_log_probs[..., 0]
    end = frame_log_probs[..., 1]
    if not cfg.flat:
      start = start + out["clip_log_probs"][:, :, None, 0]
      end = end + out["clip_log_probs"][:, :, None, 1]
    valid = frame_mask > 0
    out["start_log_scores"] = jnp.where(valid, start.reshape(n, k * m)[:, :f], NEG_INF)
    out["end_log_scores"] = jnp.where(valid, end.reshape(n, k * m)[:, :f], NEG_INF)
    out["frame_log_probs"] = jnp.where(valid[..., None], frame_log_probs.reshape(n, k * m, 3)[:, :f], 0.0)
    out["frame_text"] = text_out
    return out

  def embed_query(self, query_parts) -> jax.Array:
    """Dual-encoder query vectors [B, e] from `encode_query` output (needs dual_encoder_dim)."""
    return self.dual_encoder.embed_query(query_parts["frame_text"], query_parts["query_mask"])

  def embed_clips(self, video_parts) -> tuple[jax.Array, jax.Array]:
    """Dual-encoder clip vectors [B, K, e] and the clip mask [B, K] from `encode_video` output."""
    tokens = video_parts["tokens"]                                                # [B, n, K, 1+M, d]
    b, n, k, t, d = tokens.shape
    ccls = jnp.moveaxis(tokens[:, :, :, 0], 1, 2).reshape(b, k, n * d)
    return self.dual_encoder.embed_clips(ccls), clip_mask_of(video_parts["frame_mask"], k, t - 1)

  def predict_masked(self, text, mlm_positions):
    """MLM logits at the masked positions only (never [.., L, vocab]).

    text: [N, ..., L, d] text outputs; mlm_positions: int [N, P].
    Returns float32 [N, ..., P, vocab].
    """
    pos = mlm_positions.reshape(mlm_positions.shape[:1] + (1,) * (text.ndim - 3) + mlm_positions.shape[1:] + (1,))
    picked = jnp.take_along_axis(text, pos, axis=-2)                              # [N, ..., P, d]
    return self.mlm_head(picked, self.embeddings)

  # -- training forward ------------------------------------------------------

  def __call__(self, batch: Mapping[str, Any], deterministic: bool = True) -> dict:
    """Training forward over a batch (docs/data_format.md).

    Returns the positive pairs' `score_pairs` outputs (without the text
    outputs), plus
      "vr_scores": [B, 1+J] f(v, h) of the positive (column 0) and of the
        `neg_index` negatives (only column 0 when `with_negatives` is off),
      "frame_mlm_logits": [B, K, P, vocab] (frame_mlm on),
      "clip_mlm_logits": [B, P, vocab] (clip_mlm on, HAMMER only),
      "neg_mask": [B, J] with hard_negatives (the mined negatives' mask, used
        by the VR loss instead of the batch's),
      with the dual-encoder head: "query_embedding" [B, e], "clip_embeddings"
        [B, K, e], "embedding_clip_mask" [B, K], "embedding_scale" [].
    """
    cfg = self.config
    queries = self.encode_query(batch["query_ids"], batch["query_mask"], deterministic)
    videos = self.encode_video(batch["video"], batch.get("subtitle"), batch["frame_mask"], deterministic)
    positive = self.score_pairs(queries, videos, deterministic)
    out = {key: value for key, value in positive.items() if key not in ("frame_text", "clip_text")}
    vr_scores = positive["vr_score"][:, None]
    if cfg.dual_encoder_dim:
      out["query_embedding"] = self.embed_query(queries)
      out["clip_embeddings"], out["embedding_clip_mask"] = self.embed_clips(videos)
      out["embedding_scale"] = self.dual_encoder.scale()
    if cfg.with_negatives and "neg_index" in batch and batch["neg_index"].shape[1] > 0:
      neg_index = batch["neg_index"]
      b, j = neg_index.shape
      if cfg.hard_negatives:
        example_mask = batch.get("example_mask", jnp.ones((b,), jnp.int32))
        neg_index, out["neg_mask"] = hardest_negatives(out["query_embedding"], out["clip_embeddings"],
                                                       out["embedding_clip_mask"], batch["video_index"],
                                                       example_mask, j)
      neg_queries, neg_videos = gather_pairs(queries, videos, jnp.repeat(jnp.arange(b), j), neg_index.reshape(-1))
      negative = self.score_pairs(neg_queries, neg_videos, deterministic, retrieval_only=True)
      vr_scores = jnp.concatenate([vr_scores, negative["vr_score"].reshape(b, j)], axis=1)
    out["vr_scores"] = vr_scores
    if cfg.frame_mlm:
      out["frame_mlm_logits"] = self.predict_masked(positive["frame_text"], batch["mlm_positions"])
    if cfg.clip_mlm and not cfg.flat:
      out["clip_mlm_logits"] = self.predict_masked(positive["clip_text"], batch["mlm_positions"])
    return out
