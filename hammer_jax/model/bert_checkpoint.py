"""Loads a Hugging Face BERT checkpoint (safetensors, PyTorch layout) into `bert.py` params.

Two key styles are accepted:
  * no prefix (a bare `BertModel`, e.g. all-MiniLM-L6-v2):
    `embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...
  * `bert.` prefix (`BertForPreTraining`/`BertForMaskedLM`, e.g. bert-base-uncased),
    which also carries the MLM head under `cls.predictions.*`.
Older checkpoints name LayerNorm parameters `gamma`/`beta`; both spellings are read.

Nothing here imports torch: the file is read with `safetensors.numpy`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from safetensors.numpy import load_file

from hammer_jax.model import pretrained
from hammer_jax.model.bert import BertConfig
from hammer_jax.model.pretrained import CheckpointError

_WEIGHTS_FILE = "model.safetensors"


class _Reader:
  """Fetches tensors by HF name, checking presence and shape; errors name the file."""

  def __init__(self, path: str, tensors: dict[str, np.ndarray], prefix: str):
    self.path = path
    self.tensors = tensors
    self.prefix = prefix

  def has(self, name: str) -> bool:
    return self.prefix + name in self.tensors

  def get(self, name: str, shape: tuple[int, ...], *alternatives: str) -> np.ndarray:
    """The float32 tensor `name` (or the first present alternative) of torch shape `shape`."""
    for candidate in (name,) + alternatives:
      full = self.prefix + candidate
      if full in self.tensors:
        value = self.tensors[full]
        if tuple(value.shape) != tuple(shape):
          raise CheckpointError(
              f"{self.path}: tensor '{full}' has shape {tuple(value.shape)} but config.json implies {tuple(shape)}")
        return np.asarray(value, dtype=np.float32)
    raise CheckpointError(f"{self.path}: tensor '{self.prefix + name}' is missing")

  def dense(self, name: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    # PyTorch Linear stores [out, in]; Flax Dense wants kernel [in, out].
    return {"kernel": np.ascontiguousarray(self.get(f"{name}.weight", (n_out, n_in)).T),
            "bias": self.get(f"{name}.bias", (n_out,))}

  def layer_norm(self, name: str, n: int) -> dict[str, np.ndarray]:
    return {"scale": self.get(f"{name}.weight", (n,), f"{name}.gamma"),
            "bias": self.get(f"{name}.bias", (n,), f"{name}.beta")}

  def embedding(self, name: str, rows: int, n: int) -> dict[str, np.ndarray]:
    return {"embedding": self.get(f"{name}.weight", (rows, n))}


def _embeddings(r: _Reader, cfg: BertConfig) -> dict:
  h = cfg.hidden_size
  return {
      "word_embeddings": r.embedding("embeddings.word_embeddings", cfg.vocab_size, h),
      "position_embeddings": r.embedding("embeddings.position_embeddings", cfg.max_position_embeddings, h),
      "token_type_embeddings": r.embedding("embeddings.token_type_embeddings", cfg.type_vocab_size, h),
      "LayerNorm": r.layer_norm("embeddings.LayerNorm", h),
  }


def _layer(r: _Reader, cfg: BertConfig, i: int) -> dict:
  h, ff = cfg.hidden_size, cfg.intermediate_size
  p = f"encoder.layer.{i}"
  return {
      "attention": {
          "query": r.dense(f"{p}.attention.self.query", h, h),
          "key": r.dense(f"{p}.attention.self.key", h, h),
          "value": r.dense(f"{p}.attention.self.value", h, h),
          "output": r.dense(f"{p}.attention.output.dense", h, h),
          "LayerNorm": r.layer_norm(f"{p}.attention.output.LayerNorm", h),
      },
      "intermediate": r.dense(f"{p}.intermediate.dense", h, ff),
      "output": r.dense(f"{p}.output.dense", ff, h),
      "LayerNorm": r.layer_norm(f"{p}.output.LayerNorm", h),
  }


def _mlm_head(r: _Reader, cfg: BertConfig) -> dict:
  h = cfg.hidden_size
  p = "cls.predictions"
  return {
      "transform": r.dense(f"{p}.transform.dense", h, h),
      "transform_LayerNorm": r.layer_norm(f"{p}.transform.LayerNorm", h),
      # Newer exports keep the same tensor (also) as decoder.bias.
      "bias": r.get(f"{p}.bias", (cfg.vocab_size,), f"{p}.decoder.bias"),
  }


def load_bert_checkpoint(checkpoint: str, num_layers: int | None = None) -> tuple[BertConfig, dict]:
  """Reads the first `num_layers` layers of a BERT checkpoint into numpy params.

  Args:
    checkpoint: a checkpoint folder (`config.json`, `model.safetensors`,
      `vocab.txt`) or the alias "minilm".
    num_layers: how many encoder layers to take (from the bottom); None: all.

  Returns:
    (config with `num_layers` = the layers taken,
     {"embeddings": BertEmbeddings params, "encoder": {"layer_0": ..., ...},
      "mlm_head": BertMLMHead params (only if the checkpoint has cls.predictions.*)}),
    all float32 numpy arrays.

  Raises:
    CheckpointError: one line naming the path and what is missing or wrong.
  """
  folder = pretrained.resolve_checkpoint_dir(checkpoint)
  hf = pretrained.read_bert_config(folder)
  config_path = os.path.join(folder, "config.json")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(
        f"{config_path}: position_embedding_type '{hf['position_embedding_type']}' is not supported (only 'absolute')")
  try:
    cfg = BertConfig.from_hf_dict(hf)
  except (ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f"{config_path}: {e}") from None

  available = cfg.num_layers
  if num_layers is None:
    num_layers = available
  if num_layers < 1 or num_layers > available:
    raise CheckpointError(
        f"{folder}: num_layers={num_layers} requested but the checkpoint has {available} layers")

  weights_path = os.path.join(folder, _WEIGHTS_FILE)
  try:
    tensors = load_file(weights_path)
  except Exception as e:  # safetensors raises its own error types for corrupt headers.
    raise CheckpointError(f"{weights_path}: cannot read ({e.__class__.__name__}: {e})") from None

  if "embeddings.word_embeddings.weight" in tensors:
    prefix = ""
  elif "bert.embeddings.word_embeddings.weight" in tensors:
    prefix = "bert."
  else:
    raise CheckpointError(
        f"{weights_path}: tensor 'embeddings.word_embeddings.weight' (or 'bert.embeddings.word_embeddings.weight') "
        "is missing")
  reader = _Reader(weights_path, tensors, prefix)

  params = {
      "embeddings": _embeddings(reader, cfg),
      "encoder": {f"layer_{i}": _layer(reader, cfg, i) for i in range(num_layers)},
  }
  # The head lives outside the "bert." prefix (next to it, under "cls.").
  head_reader = _Reader(weights_path, tensors, "")
  if head_reader.has("cls.predictions.transform.dense.weight"):
    params["mlm_head"] = _mlm_head(head_reader, cfg)
  return dataclasses.replace(cfg, num_layers=num_layers), params
