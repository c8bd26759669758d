"""HAMMER's static hyper-parameters (`ModelConfig`), built from a config by `build.model_config`.

Its own module so that the model file holds the module alone; `hammer.ModelConfig`
stays importable.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from hammer_jax.model.bert import BertConfig
from hammer_jax.model.encoders import SUBTITLE, VISUAL

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters (hashable), built by `build.model_config(config, ...)`.

  No defaults here: configs/base.py holds them, once."""
  bert: BertConfig                  # Text-side dims; d = bert.hidden_size. num_layers = text_layers.
  video_dim: int                    # D_in of the visual features.
  subtitle_dim: int                 # 0: no subtitle (ASR) stream.
  text_layers: int
  video_layers: int
  cross_modal: bool                 # Table 6.
  clip_len: int                     # M (Table 7).
  max_frames: int                   # Sizes the position tables; inputs may have fewer frames.
  share_encoders: bool              # Table 8.
  clip_position_embedding: bool     # Table 9.
  frame_position: str               # "in_clip" | "absolute".
  flat: bool                        # FLAT baseline.
  dtype: str                        # Compute dtype; params are always float32.
  with_negatives: bool              # __call__ scores neg_index pairs (only VR needs them).
  frame_mlm: bool                   # __call__ returns frame-level MLM logits.
  clip_mlm: bool                    # __call__ returns clip-level MLM logits (not in FLAT).
  # Init std of the layers trained from scratch (video branches, CCLS, cross-modal
  # layers); 0 means 1/sqrt(d) (choice; configs/base.py).
  new_layer_init_std: float
  # Width of the dual-encoder (first-stage) head's vectors (dual_encoder.py); 0: no
  # such head (the paper's model).
  dual_encoder_dim: int
  # VR negatives: the batch's `neg_index` (False, the paper's random draw) or the
  # first stage's hardest videos of the batch (True; needs dual_encoder_dim).
  hard_negatives: bool = False
  # f(v, h) per clip = theta . Psi(phi_k) + the dual-encoder head's clip score
  # (needs dual_encoder_dim; not in the paper: `_first_stage_clip_scores`).
  vr_first_stage_residual: bool = False

  def __post_init__(self):
    if self.frame_position not in ("in_clip", "absolute"):
      raise ValueError(f"frame_position must be 'in_clip' or 'absolute', got '{self.frame_position}'")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got '{self.dtype}'")
    if self.clip_len < 1 or self.max_frames < 1:
      raise ValueError("clip_len and max_frames must be positive")

  @property
  def modalities(self) -> tuple[str, ...]:
    return (VISUAL, SUBTITLE) if self.subtitle_dim > 0 else (VISUAL,)

  @property
  def max_clips(self) -> int:
    return 1 if self.flat else math.ceil(self.max_frames / self.clip_len)
