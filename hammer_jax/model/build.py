"""Building HAMMER from a config: the model, its params (random, then the pretrained text side), groups.

  model = create_model(config, video_dim, subtitle_dim)
  params = init_params(model, config, rng, dummy_batch(config, video_dim, subtitle_dim))

`load_pretrained_text` writes a BERT checkpoint's embeddings, first
`text_layers` layers and MLM head into both text branches (paper 6.1.5); every
other layer is trained from scratch. `is_pretrained_path` / `parameter_group`
name which parameters are which, for the optimizer's parameter groups and the
per-objective gradient norms that training logs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hammer_jax.model import pretrained
from hammer_jax.model.bert import BertConfig
from hammer_jax.model.hammer import Hammer, ModelConfig

def text_bert_config(config) -> BertConfig:
  """The text side's BertConfig: the checkpoint's (config.json only) or `config.model.bert`.

  Dropout rates are `config.model.dropout_rate` everywhere (hidden and attention),
  whatever the checkpoint says, so that one knob controls the whole model.
  """
  mc = config.model
  if mc.text_checkpoint:
    folder = pretrained.resolve_checkpoint_dir(mc.text_checkpoint)
    bert = BertConfig.from_hf_dict(pretrained.read_bert_config(folder))
    if bert.num_layers < mc.text_layers:
      raise pretrained.CheckpointError(
          f"{folder}: text_layers={mc.text_layers} but the checkpoint has {bert.num_layers} layers")
  else:
    bert = BertConfig(**dict(mc.bert))
  bert = dataclasses.replace(bert, num_layers=mc.text_layers, dropout_rate=mc.dropout_rate,
                             attention_dropout_rate=mc.dropout_rate)
  if mc.max_query_len > bert.max_position_embeddings:
    raise ValueError(f"max_query_len={mc.max_query_len} exceeds max_position_embeddings={bert.max_position_embeddings}")
  return bert


def model_config(config, video_dim: int, subtitle_dim: int = 0) -> ModelConfig:
  """ModelConfig from the ml_collections config and the data's feature widths."""
  mc = config.model
  if config.loss.use_vr and config.data.num_negatives < 1:
    from configs.base import ConfigError
    raise ConfigError("loss.use_vr needs data.num_negatives >= 1: with no negative the VR loss (Eq. 4) is 0 "
                     "and VR learns nothing; set --config.data.num_negatives or switch VR off (objectives=...)")
  use_subtitles = bool(config.data.use_subtitles)
  return ModelConfig(
      bert=text_bert_config(config),
      video_dim=int(video_dim),
      subtitle_dim=int(subtitle_dim) if use_subtitles else 0,
      text_layers=mc.text_layers,
      video_layers=mc.video_layers,
      cross_modal=mc.cross_modal,
      clip_len=mc.clip_len,
      max_frames=mc.max_frames,
      share_encoders=mc.share_encoders,
      clip_position_embedding=mc.clip_position_embedding,
      frame_position=mc.frame_position,
      flat=mc.flat,
      dtype=mc.dtype,
      with_negatives=bool(config.loss.use_vr) and config.data.num_negatives > 0,
      frame_mlm=bool(config.loss.use_frame_mlm),
      clip_mlm=bool(config.loss.use_clip_mlm) and not mc.flat,
      new_layer_init_std=float(mc.new_layer_init_std),
      dual_encoder_dim=int(mc.dual_encoder_dim) if config.loss.use_dual_encoder else 0,
      hard_negatives=_hard_negatives(config),
      vr_first_stage_residual=_vr_first_stage_residual(config),
  )


def _vr_first_stage_residual(config) -> bool:
  on = bool(config.model.get("vr_first_stage_residual", False))
  if on and not config.loss.use_dual_encoder:
    from configs.base import ConfigError
    raise ConfigError("model.vr_first_stage_residual adds the dual-encoder head's score to f(v, h): "
                      "set loss.use_dual_encoder=True (or use the 'recommended' variant)")
  return on


def _hard_negatives(config) -> bool:
  """data.negatives: "random" (the paper's draw from the batch) or "hard" (the first stage's hardest)."""
  kind = config.data.get("negatives", "random")
  if kind not in ("random", "hard"):
    from configs.base import ConfigError
    raise ConfigError(f"data.negatives must be 'random' or 'hard', got {kind!r}")
  if kind == "hard" and not config.loss.use_dual_encoder:
    from configs.base import ConfigError
    raise ConfigError("data.negatives='hard' mines VR negatives with the dual-encoder head: "
                      "set loss.use_dual_encoder=True (or use the 'recommended' variant)")
  return kind == "hard"


def create_model(config, video_dim: int, subtitle_dim: int = 0) -> Hammer:
  """The Hammer module for `config` (subtitle stream iff subtitle_dim > 0 and data.use_subtitles)."""
  return Hammer(model_config(config, video_dim, subtitle_dim))


def dummy_batch(config, video_dim: int, subtitle_dim: int = 0, batch_size: int = 2) -> dict:
  """A zero batch with the shapes of docs/data_format.md (for init / eval_shape)."""
  b, f, l = batch_size, config.data.max_frames, config.data.max_query_len
  j, p = config.data.num_negatives, config.data.max_mlm_predictions
  batch = {
      "query_ids": np.zeros((b, l), np.int32), "query_mask": np.ones((b, l), np.int32),
      "mlm_positions": np.zeros((b, p), np.int32), "mlm_targets": np.zeros((b, p), np.int32),
      "mlm_weights": np.zeros((b, p), np.float32),
      "video": np.zeros((b, f, video_dim), np.float32), "frame_mask": np.ones((b, f), np.int32),
      "start_frame": np.zeros((b,), np.int32), "end_frame": np.zeros((b,), np.int32),
      "start_clip": np.zeros((b,), np.int32), "end_clip": np.zeros((b,), np.int32),
      "frame_labels": np.zeros((b, f, 3), np.float32),
      "neg_index": np.zeros((b, j), np.int32), "neg_mask": np.zeros((b, j), np.float32),
      "example_mask": np.ones((b,), np.int32), "video_index": np.arange(b, dtype=np.int32),
  }
  if subtitle_dim > 0 and config.data.use_subtitles:
    batch["subtitle"] = np.zeros((b, f, subtitle_dim), np.float32)
  return batch


def init_random_params(model: Hammer, rng, example_batch: Mapping[str, Any]) -> dict:
  """Random initial params ({"params": ...}); pure, so usable under jax.eval_shape / jit."""
  return model.init({"params": rng}, example_batch, deterministic=True)


def init_params(model: Hammer, config, rng, example_batch: Mapping[str, Any]) -> dict:
  """Random init, then the text side from `config.model.text_checkpoint` (if set)."""
  params = init_random_params(model, rng, example_batch)
  return load_pretrained_text(params, config)


def _replace_subtree(old, new, path: str):
  """`new` (numpy, checkpoint) cast and placed like `old`; keys and shapes must agree."""
  if isinstance(old, Mapping):
    if not isinstance(new, Mapping) or set(old) != set(new):
      raise ValueError(f"{path}: checkpoint keys {sorted(new) if isinstance(new, Mapping) else type(new)} "
                       f"!= model keys {sorted(old)}")
    return {key: _replace_subtree(old[key], new[key], f"{path}/{key}") for key in old}
  if tuple(old.shape) != tuple(np.shape(new)):
    raise ValueError(f"{path}: checkpoint shape {np.shape(new)} != model shape {tuple(old.shape)}")
  value = np.asarray(new, dtype=old.dtype)
  sharding = getattr(old, "sharding", None)
  return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


# Where load_pretrained_text writes the checkpoint: these top-level collections and
# the `text_branch` of each encoder (clip_encoder absent in FLAT / when shared).
PRETRAINED_TOP_LEVEL = ("embeddings", "mlm_head")
TEXT_ENCODERS = ("frame_encoder", "clip_encoder")


def is_pretrained_path(keys) -> bool:
  """Whether the parameter at `keys` (top-level name first) starts from the text checkpoint."""
  keys = tuple(keys)
  return bool(keys) and (keys[0] in PRETRAINED_TOP_LEVEL or
                         (keys[0] in TEXT_ENCODERS and keys[1:2] == ("text_branch",)))


def parameter_group(keys) -> str:
  """"text" (embeddings, text branches, MLM head), "video" (video inputs and branches),
  "cross_modal" (co-attention layers) or "head" (VR, TL and dual-encoder heads) for
  the parameter at `keys` (top-level name first). The first three are what the
  objectives share; training logs the gradient each objective sends into them."""
  keys = tuple(keys)
  if is_pretrained_path(keys):
    return "text"
  if keys[0].startswith(("frame_input", "clip_input")) or (
      keys[0] in TEXT_ENCODERS and keys[1].startswith("video_branch")):
    return "video"
  if keys[0] in TEXT_ENCODERS:
    return "cross_modal"
  return "head"


def load_pretrained_text(params: Mapping[str, Any], config) -> dict:
  """Overwrites the embeddings, both text branches (+ MLM head if the checkpoint has one).

  Each text branch takes the checkpoint's first `config.model.text_layers` layers.
  Returns new params (the input is not modified); a leaf keeps its sharding when
  it is a jax.Array. No-op when `config.model.text_checkpoint` is None.
  """
  checkpoint = config.model.text_checkpoint
  if not checkpoint:
    return params
  if "params" in params:  # Unwrap before reading the checkpoint, so it is read once.
    return {**params, "params": load_pretrained_text(params["params"], config)}
  from hammer_jax.model.bert_checkpoint import load_bert_checkpoint  # Deferred: reads safetensors.
  _, ckpt = load_bert_checkpoint(checkpoint, num_layers=config.model.text_layers)
  p = dict(params)
  p["embeddings"] = _replace_subtree(p["embeddings"], ckpt["embeddings"], "embeddings")
  for enc in TEXT_ENCODERS:
    if enc in p:
      p[enc] = {**p[enc], "text_branch": _replace_subtree(p[enc]["text_branch"], ckpt["encoder"],
                                                          f"{enc}/text_branch")}
  if "mlm_head" in ckpt and "mlm_head" in p:
    p["mlm_head"] = _replace_subtree(p["mlm_head"], ckpt["mlm_head"], "mlm_head")
  return p
