"""Tiny configs and random batches (docs/data_format.md) for the model, loss and decoding tests."""

from __future__ import annotations

import numpy as np

from configs.base import get_base_config

# XLA's LLVM backend at -O0: compiling dominates these tests on a 2-core CPU and the
# tiny models run in milliseconds either way (about 40% less compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fun, **kwargs):
  """jax.jit with FAST_COMPILE."""
  import jax
  return jax.jit(fun, compiler_options=FAST_COMPILE, **kwargs)

VIDEO_DIM = 12
SUBTITLE_DIM = 10
VOCAB = 64
CLS_ID, SEP_ID, MASK_ID = 1, 2, 3


def tiny_config(*, flat: bool = False, subtitles: bool = True, max_frames: int = 16, clip_len: int = 4,
                max_query_len: int = 8, hidden: int = 32, **model_overrides):
  """A random-init (no checkpoint) config with tiny dims; `model_overrides` set config.model.*."""
  c = get_base_config()
  c.data.max_frames = max_frames        # FieldReferences: also sets config.model.max_frames etc.
  c.data.clip_len = clip_len
  c.data.max_query_len = max_query_len
  c.data.num_negatives = 2
  c.data.max_mlm_predictions = 3
  c.data.use_subtitles = subtitles
  c.model.text_checkpoint = None
  c.model.bert.update(dict(vocab_size=VOCAB, hidden_size=hidden, num_heads=2, intermediate_size=2 * hidden,
                           max_position_embeddings=32))
  c.model.text_layers = 2
  c.model.flat = flat
  for key, value in model_overrides.items():
    setattr(c.model, key, value)
  return c


def random_batch(config, batch_size: int = 4, *, seed: int = 0, num_frames=None, query_lens=None,
                 pad_frames_to=None, pad_query_to=None) -> dict:
  """A random, internally consistent batch.

  num_frames / query_lens: per-example real lengths (default: random).
  pad_frames_to / pad_query_to: pad F / L beyond config.data.max_frames / max_query_len
  (the padding-invariance test feeds the same content with more padding).
  """
  rng = np.random.default_rng(seed)
  b = batch_size
  f = pad_frames_to or config.data.max_frames
  l = pad_query_to or config.data.max_query_len
  max_f, max_l = config.data.max_frames, config.data.max_query_len
  clip_len = config.data.clip_len
  p, j = config.data.max_mlm_predictions, config.data.num_negatives
  if num_frames is None:
    num_frames = rng.integers(max(2, max_f // 3), max_f + 1, size=b)
  if query_lens is None:
    query_lens = rng.integers(4, max_l + 1, size=b)

  video = np.zeros((b, f, VIDEO_DIM), np.float32)
  subtitle = np.zeros((b, f, SUBTITLE_DIM), np.float32)
  frame_mask = np.zeros((b, f), np.int32)
  query_ids = np.zeros((b, l), np.int32)
  query_mask = np.zeros((b, l), np.int32)
  mlm_positions = np.zeros((b, p), np.int32)
  mlm_targets = np.zeros((b, p), np.int32)
  mlm_weights = np.zeros((b, p), np.float32)
  start = np.zeros((b,), np.int32)
  end = np.zeros((b,), np.int32)
  labels = np.zeros((b, f, 3), np.float32)
  for i in range(b):
    n, q = int(num_frames[i]), int(query_lens[i])
    video[i, :n] = rng.normal(size=(n, VIDEO_DIM))
    subtitle[i, :n] = rng.normal(size=(n, SUBTITLE_DIM)) * (rng.random((n, 1)) < 0.7)
    frame_mask[i, :n] = 1
    words = rng.integers(4, VOCAB, size=q - 2)
    query_ids[i, :q] = np.concatenate([[CLS_ID], words, [SEP_ID]])
    query_mask[i, :q] = 1
    used = min(p, max(1, q - 2))
    pos = np.sort(rng.choice(np.arange(1, q - 1), size=min(used, q - 2), replace=False))
    mlm_positions[i, :len(pos)] = pos
    mlm_targets[i, :len(pos)] = query_ids[i, pos]
    mlm_weights[i, :len(pos)] = 1.0
    query_ids[i, pos] = MASK_ID
    s = int(rng.integers(0, n))
    e = int(rng.integers(s, n))
    start[i], end[i] = s, e
    labels[i, :n, 2] = 1.0
    labels[i, s] = (1.0, 0.0, 0.0)
    labels[i, e] = (0.0, 1.0, 0.0) if e != s else (0.5, 0.5, 0.0)
  neg_index = np.stack([(np.arange(b) + 1 + k) % b for k in range(j)], axis=1).astype(np.int32)
  batch = {
      "query_ids": query_ids, "query_mask": query_mask, "query_index": np.arange(b, dtype=np.int32),
      "mlm_positions": mlm_positions, "mlm_targets": mlm_targets, "mlm_weights": mlm_weights,
      "video": video, "frame_mask": frame_mask,
      "start_frame": start, "end_frame": end,
      "start_clip": start // clip_len, "end_clip": end // clip_len,
      "frame_labels": labels,
      "neg_index": neg_index, "neg_mask": np.ones((b, j), np.float32),
      "duration": num_frames.astype(np.float32) * 1.5, "frame_seconds": np.full((b,), 1.5, np.float32),
      "video_index": np.arange(b, dtype=np.int32), "example_mask": np.ones((b,), np.int32),
  }
  if config.data.use_subtitles:
    batch["subtitle"] = subtitle
  return batch


def quick_params(model, batch, seed: int = 0, std: float = 0.02) -> dict:
  """Params of the init's shapes filled from numpy: N(0, std) weights, unit LayerNorm
  scales, small random biases.

  On this CPU compiling the real random init (threefry for ~200 shapes) costs 10-30 s
  per config, so most tests use this; `hammer.init_random_params` itself is
  exercised by the MiniLM test. Biases are random (not zero as in the real init) so
  that a test cannot pass because some term happens to vanish.
  """
  import jax
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, batch, deterministic=True))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "LayerNorm" in name and name.endswith("['scale']"):
      return np.ones(leaf.shape, np.float32)
    scale = std / 2 if name.endswith("['bias']") else std
    return rng.normal(0.0, scale, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
