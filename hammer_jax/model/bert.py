"""BERT in Flax (linen), laid out so a Hugging Face BERT checkpoint maps onto it.

HAMMER's text branches are BERT encoders: the query encoder, and the ViLBERT-style
co-attention layers whose keys/values come from the other modality. The modules
here mirror `transformers.BertModel` closely enough that the float32 outputs of a
real checkpoint agree with the PyTorch reference to about 1e-5 (see
`tests/test_bert.py`); `bert_checkpoint.load_bert_checkpoint` produces their
parameters.

Parameter tree (what `load_bert_checkpoint` fills; names follow HF where it can):

  embeddings: word_embeddings/embedding, position_embeddings/embedding,
              token_type_embeddings/embedding, LayerNorm/{scale,bias}
  encoder:    layer_<i>: attention: query, key, value, output (Dense),
                                    LayerNorm
                         intermediate (Dense), output (Dense), LayerNorm
  mlm_head:   transform (Dense), transform_LayerNorm, bias [vocab]
              (the decoder matrix is the tied word-embedding table)

Mixed precision: `dtype` is the compute dtype (e.g. bfloat16), `param_dtype` the
storage dtype. Attention logits and softmax, LayerNorm statistics and MLM logits
are computed in float32 regardless, because those are where bfloat16 loses the
most accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Added to the logits of masked keys. Finite (not finfo.min) so that adding it to
# a negative logit cannot overflow to -inf, and a fully masked row gives a uniform
# distribution instead of NaN.
_MASK_BIAS = -1e9

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form.
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture hyper-parameters (defaults: all-MiniLM-L6-v2)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  # Std of the normal init of Dense/Embed weights (HF's initializer_range). Only
  # matters for weights trained from scratch (see hammer.ModelConfig.new_layer_init_std).
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act '{self.hidden_act}' is not supported; use one of {sorted(_ACTIVATIONS)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf_dict(cls, d: dict) -> "BertConfig":
    """From a Hugging Face BERT `config.json` dict (unknown keys are ignored)."""
    default = cls()
    return cls(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=int(d["num_attention_heads"]),
        intermediate_size=int(d["intermediate_size"]),
        max_position_embeddings=int(d["max_position_embeddings"]),
        type_vocab_size=int(d.get("type_vocab_size", default.type_vocab_size)),
        layer_norm_eps=float(d.get("layer_norm_eps", default.layer_norm_eps)),
        hidden_act=str(d.get("hidden_act", default.hidden_act)),
        dropout_rate=float(d.get("hidden_dropout_prob", default.dropout_rate)),
        attention_dropout_rate=float(d.get("attention_probs_dropout_prob", default.attention_dropout_rate)),
    )


def _dense(features: int, config: "BertConfig", dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
  # HF initialises every Linear with N(0, 0.02) (initializer_range); matters only for
  # layers trained from scratch, e.g. co-attention layers without a checkpoint.
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nn.initializers.normal(config.initializer_range), name=name)


def _layer_norm(config: BertConfig, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
  # Flax LayerNorm computes its statistics in at least float32 whatever `dtype` is.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                     embedding_init=init, name=name)
    self.word_embeddings = embed(cfg.vocab_size, "word_embeddings")
    self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings")
    self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings")
    self.LayerNorm = _layer_norm(cfg, self.dtype, self.param_dtype, "LayerNorm")
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, input_ids, token_type_ids=None, *, deterministic: bool = True):
    """input_ids, token_type_ids: [batch, tokens] int -> [batch, tokens, hidden]."""
    length = input_ids.shape[-1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"{length} tokens exceed max_position_embeddings={self.config.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (self.word_embeddings(input_ids)
         + self.position_embeddings(jnp.arange(length))
         + self.token_type_embeddings(token_type_ids))
    x = self.LayerNorm(x)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x):
    """x: [..., hidden] -> [..., vocab] logits against the (tied) word-embedding table."""
    return self.word_embeddings.attend(x)


class BertAttention(nn.Module):
  """Multi-head attention + output projection, dropout, residual, LayerNorm (HF BertAttention)."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, context, context_mask, *, deterministic: bool = True):
    """Attends from `hidden` to `context`.

    Args:
      hidden: [batch, q_tokens, hidden]; gives the queries and the residual.
      context: [batch, k_tokens, hidden]; gives keys and values (`hidden` itself
        for self-attention).
      context_mask: [batch, k_tokens]; 1 where a key may be attended to.
    Returns:
      [batch, q_tokens, hidden].
    """
    cfg = self.config
    heads, head_dim = cfg.num_heads, cfg.head_dim

    def project(x, name):  # -> [batch, tokens, heads, head_dim]
      y = _dense(cfg.hidden_size, cfg, self.dtype, self.param_dtype, name)(x)
      return y.reshape(y.shape[:-1] + (heads, head_dim))

    q = project(hidden, "query")
    k = project(context, "key")
    v = project(context, "value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(head_dim))
    keep = jnp.asarray(context_mask).astype(bool)[:, None, None, :]
    logits = jnp.where(keep, logits, logits + _MASK_BIAS)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(cfg.attention_dropout_rate)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    out = out.reshape(out.shape[:2] + (cfg.hidden_size,))
    out = _dense(cfg.hidden_size, cfg, self.dtype, self.param_dtype, "output")(out)
    out = nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)
    return _layer_norm(cfg, self.dtype, self.param_dtype, "LayerNorm")(out + hidden)


class BertLayer(nn.Module):
  """One transformer block: attention, then feed-forward with residual and LayerNorm."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, mask, *, deterministic: bool = True, context=None, context_mask=None):
    """hidden: [batch, tokens, hidden]; mask: [batch, tokens] (1 = real token).

    With `context` ([batch, k_tokens, hidden]) and `context_mask` ([batch, k_tokens])
    the block cross-attends (ViLBERT co-attention); `mask` is then not needed,
    since a query position's output does not depend on whether it is padding.
    Returns [batch, tokens, hidden].
    """
    cfg = self.config
    if context is None:
      context, context_mask = hidden, mask
    elif context_mask is None:
      raise ValueError("BertLayer: context given without context_mask")
    x = BertAttention(cfg, self.dtype, self.param_dtype, name="attention")(
        hidden, context, context_mask, deterministic=deterministic)
    y = _dense(cfg.intermediate_size, cfg, self.dtype, self.param_dtype, "intermediate")(x)
    y = _ACTIVATIONS[cfg.hidden_act](y)
    y = _dense(cfg.hidden_size, cfg, self.dtype, self.param_dtype, "output")(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    return _layer_norm(cfg, self.dtype, self.param_dtype, "LayerNorm")(y + x)


class BertEncoder(nn.Module):
  """A stack of `num_layers` self-attention BertLayers named layer_0 .. layer_{n-1}."""
  config: BertConfig
  num_layers: int | None = None  # None: config.num_layers.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, mask, *, deterministic: bool = True, return_all_layers: bool = False):
    """hidden: [batch, tokens, hidden]; mask: [batch, tokens].

    Returns the last layer's [batch, tokens, hidden], or the list of every
    layer's output when `return_all_layers`.
    """
    n = self.config.num_layers if self.num_layers is None else self.num_layers
    outputs = []
    for i in range(n):
      hidden = BertLayer(self.config, self.dtype, self.param_dtype, name=f"layer_{i}")(
          hidden, mask, deterministic=deterministic)
      outputs.append(hidden)
    if return_all_layers:
      return outputs
    return hidden


class BertMLMHead(nn.Module):
  """HF BertLMPredictionHead: transform (Dense, act, LayerNorm), tied decoder + own bias."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, embeddings: BertEmbeddings):
    """hidden: [batch, tokens, hidden] -> float32 logits [batch, tokens, vocab].

    `embeddings` is the (bound) BertEmbeddings whose word table is the decoder.
    """
    cfg = self.config
    x = _dense(cfg.hidden_size, cfg, self.dtype, self.param_dtype, "transform")(hidden)
    x = _ACTIVATIONS[cfg.hidden_act](x)
    x = _layer_norm(cfg, self.dtype, self.param_dtype, "transform_LayerNorm")(x)
    bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), self.param_dtype)
    # float32 logits: the cross-entropy over 30k classes is sensitive to bf16 rounding.
    return embeddings.attend(x).astype(jnp.float32) + bias.astype(jnp.float32)


class BertModel(nn.Module):
  """Embeddings + encoder; returns every intermediate output (for parity tests)."""
  config: BertConfig
  num_layers: int | None = None  # None: config.num_layers.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embeddings = BertEmbeddings(self.config, self.dtype, self.param_dtype)
    self.encoder = BertEncoder(self.config, self.num_layers, self.dtype, self.param_dtype)

  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
    """input_ids, attention_mask, token_type_ids: [batch, tokens].

    Returns (embedding output [batch, tokens, hidden], list of each layer's
    [batch, tokens, hidden]).
    """
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic)
    layers = self.encoder(x, attention_mask, deterministic=deterministic, return_all_layers=True)
    return x, layers
