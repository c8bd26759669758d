"""HAMMER's hierarchical encoder: text branch, video branch(es), co-attention layer.

One *hierarchical encoder* (paper 3.3, supplement 6.1.3) is

  * a **text branch**: `text_layers` BERT layers over the query embeddings
    (initialised from the first layers of a pretrained BERT);
  * one **video branch** per modality (visual; subtitle/ASR when present): an
    input embedding (`VideoInput`: Dense(D_in -> d) + position embedding +
    LayerNorm + dropout) followed by `video_layers` transformer layers;
  * one **cross-modal layer** per modality (`CoAttentionLayer`, ViLBERT style):
    text attends to that modality's tokens and the tokens attend to the text,
    both computed from the layer's inputs.

With several modalities the text outputs of the per-modality cross-modal layers
are added, then LayerNorm and dropout (supplement 6.1.3); the video outputs stay
per modality and the caller concatenates them.

The frame encoder Phi and the clip encoder Psi (`hammer.py`) are two instances of
`HierarchicalEncoder` with their own `VideoInput`s. `VideoInput` lives outside
`HierarchicalEncoder` on purpose: when the two encoders share weights (Table 8)
their input projections cannot be shared (Phi projects D_in-dim frame features,
Psi projects d-dim clip vectors), so only the encoder body is shared.

Shapes: `N` is any leading batch of sequences (queries, clips of pairs, ...),
`L` query tokens, `T` video tokens, `d` hidden size.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from hammer_jax.model.bert import BertConfig, BertEncoder, BertLayer

Dtype = Any

VISUAL = "visual"
SUBTITLE = "subtitle"


class VideoInput(nn.Module):
  """Input embedding of one video stream, with an optional learned CLS token first.

  `Dense(D_in -> d)`, then (CLS prepended) `+ position embedding`, LayerNorm and
  dropout: the same order as BERT's embeddings (sum, then normalise), so every
  stream enters the transformer layers at the scale the text does.
  """
  config: BertConfig
  num_positions: int  # Rows of the position table; 0: no position embedding (Table 9 ablation).
  with_cls: bool      # Prepend a learned CCLS token (frame encoder) or not (clip encoder).
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features, positions=None, *, deterministic: bool = True):
    """Embeds a stream.

    Args:
      features: [batch, tokens, D_in] features (frames or clip vectors).
      positions: int [tokens_out] or [batch, tokens_out] row of the position table
        for every output token (the CLS included, when `with_cls`); ignored when
        `num_positions` is 0.
    Returns:
      [batch, tokens_out, d] with tokens_out = tokens (+1 with CLS).
    """
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    x = nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
                 name="projection")(features)
    if self.with_cls:
      cls = self.param("cls", init, (cfg.hidden_size,), self.param_dtype).astype(x.dtype)
      cls = jnp.broadcast_to(cls, x.shape[:-2] + (1, cfg.hidden_size))
      x = jnp.concatenate([cls, x], axis=-2)
    if self.num_positions:
      table = nn.Embed(self.num_positions, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=init, name="position_embeddings")
      x = x + table(positions)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="LayerNorm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class CoAttentionLayer(nn.Module):
  """ViLBERT co-attention between the text and one video stream.

  Two BertLayers with context: `text_to_video` (text queries, video keys/values)
  and `video_to_text` (video queries, text keys/values). Each is attention +
  residual + LayerNorm + feed-forward + residual + LayerNorm. Both read the
  layer's *inputs*, so neither side sees the other's updated states.
  """
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.text_to_video = BertLayer(self.config, self.dtype, self.param_dtype)
    self.video_to_text = BertLayer(self.config, self.dtype, self.param_dtype)

  def __call__(self, text, text_mask, video, video_mask, *, deterministic: bool = True,
               text_side: bool = True):
    """text: [N, L, d], text_mask: [N, L]; video: [N, T, d], video_mask: [N, T].

    Returns (text_out [N, L, d] or None when not `text_side`, video_out [N, T, d]).
    `text_side=False` skips the text half (video retrieval needs only the video
    half: it saves the text tokens' cross-attention and feed-forward).
    """
    video_out = self.video_to_text(video, video_mask, context=text, context_mask=text_mask,
                                   deterministic=deterministic)
    text_out = None
    if text_side:
      text_out = self.text_to_video(text, text_mask, context=video, context_mask=video_mask,
                                    deterministic=deterministic)
    return text_out, video_out


class HierarchicalEncoder(nn.Module):
  """Text branch + per-modality video-branch layers + per-modality cross-modal layers.

  The three parts are separate methods so that the query-only part
  (`encode_text`) and the video-only part (`encode_video`) can be computed once
  and cached, and only `fuse` runs per (query, video) pair.

  Parameters: `text_branch/layer_<i>` (BERT layout, loadable from a checkpoint),
  `video_branch_<modality>/layer_<i>`, `cross_modal_<modality>/{text_to_video,
  video_to_text}`, and `text_fuse_LayerNorm` with several modalities.
  """
  config: BertConfig
  text_layers: int
  video_layers: int
  modalities: tuple[str, ...]
  cross_modal: bool = True  # Table 6: False removes the co-attention layers.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Config of the layers trained from scratch (video branches, cross-modal layers):
  # the text one with another init scale (hammer.ModelConfig.new_layer_init_std).
  new_layer_config: BertConfig | None = None

  def setup(self):
    cfg = self.config
    new = self.new_layer_config or cfg
    self.text_branch = BertEncoder(cfg, self.text_layers, self.dtype, self.param_dtype)
    # Dicts of submodules are named `<attribute>_<key>` by Flax.
    self.video_branch = {m: BertEncoder(new, self.video_layers, self.dtype, self.param_dtype)
                         for m in self.modalities}
    if self.cross_modal:
      self.cross_modal_layer = {m: CoAttentionLayer(new, self.dtype, self.param_dtype) for m in self.modalities}
      if len(self.modalities) > 1:
        self.text_fuse_LayerNorm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                                                param_dtype=self.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def encode_text(self, embedded, mask, *, deterministic: bool = True):
    """embedded: [N, L, d] query embeddings, mask: [N, L] -> text-branch output [N, L, d]."""
    return self.text_branch(embedded, mask, deterministic=deterministic)

  def encode_video(self, tokens: Mapping[str, Any], mask, *, deterministic: bool = True) -> dict:
    """tokens: {modality: [N, T, d]} embedded streams, mask: [N, T] -> {modality: [N, T, d]}."""
    return {m: self.video_branch[m](tokens[m], mask, deterministic=deterministic) for m in self.modalities}

  def fuse(self, text, text_mask, video: Mapping[str, Any], video_mask, *, deterministic: bool = True,
           text_side: bool = True):
    """Cross-modal layer(s).

    Args:
      text: [N, L, d] text-branch output, text_mask: [N, L].
      video: {modality: [N, T, d]} video-branch outputs, video_mask: [N, T].
      text_side: also compute the query-side outputs (see CoAttentionLayer).
    Returns:
      (text_out [N, L, d] or None, {modality: [N, T, d]}). Without the
      cross-modal layer (Table 6 ablation) the inputs come back unchanged:
      the caller then combines the modalities with the query late (hammer.py).
    """
    if not self.cross_modal:
      return (text if text_side else None), dict(video)
    text_outs, video_out = [], {}
    for m in self.modalities:
      t, v = self.cross_modal_layer[m](text, text_mask, video[m], video_mask, deterministic=deterministic,
                                       text_side=text_side)
      text_outs.append(t)
      video_out[m] = v
    if not text_side:
      return None, video_out
    if len(text_outs) == 1:
      # One modality: the co-attention output is already LayerNorm-ed; the add +
      # LayerNorm + dropout of supplement 6.1.3 only exists to merge modalities.
      return text_outs[0], video_out
    fused = self.text_fuse_LayerNorm(sum(text_outs[1:], text_outs[0]))
    return self.dropout(fused, deterministic=deterministic), video_out
