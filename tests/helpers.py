"""What the tests share: paths, the tiny configs, random batches and params, raw data and shard helpers.

The one `tiny` config is the `tiny` variant of configs/variants.py:
`tiny_config` trains it on a small synthetic corpus; `tiny_model_config` is the
same model at unit-test sizes (vocabulary 64, 8 query tokens) for the model, loss
and decoding tests. Raw inputs (TVR and ActivityNet layouts) have feature values
that are a deterministic, non-linear function of (video name, row, column), so a
test can recompute exactly what went into a feature file.
"""

from __future__ import annotations

import glob
import json
import math
import os
import zlib

import h5py
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")
SMALL_SYNTHETIC = dict(num_train_videos=40, num_val_videos=12, num_test_videos=12,
                       visual_dim=16, subtitle_dim=8, min_duration=9.0, max_duration=24.0)


# -- configs and training runs -----------------------------------------------------

def require(ok: bool, what: str) -> None:
  """Nothing when `ok`; else skips with `what`, except under CI=true, where it fails.

  CI has ../shared, the browser and a git checkout: a test that cannot find its
  input there is a broken setup, not a reason to pass silently.
  """
  if ok:
    return
  import pytest
  if os.environ.get("CI", "").strip().lower() in ("true", "1"):
    pytest.fail(f"CI=true and {what}: this test must run instead of skipping")
  pytest.skip(what)


def tiny_config(tmp_data=None, **overrides):
  """`configs/demo.py:tiny` on the SMALL_SYNTHETIC corpus (prepared at `tmp_data` if given), with overrides."""
  from configs import demo
  c = demo.get_config("tiny")
  c.data.synthetic = dict(SMALL_SYNTHETIC)
  if tmp_data:
    c.data.prepared_dir = tmp_data
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def pipeline_spec(**overrides):
  """The input pipeline's spec of configs/base.py's `data`, with `overrides`."""
  from configs import base
  from hammer_jax.data.input_pipeline import PipelineSpec
  data = base.get_base_config().data
  for key, value in overrides.items():
    data[key] = value
  return PipelineSpec.from_config(data)


def read_scalars(workdir, tag):
  """{step: value} of one scalar from the run's TensorBoard files."""
  import tensorflow as tf
  out = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
    for raw in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      for v in event.summary.value:
        if v.tag == tag:
          out[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
  return out


def checkpoint_steps(workdir):
  """Finished checkpoint steps (Orbax's unfinished `<step>.orbax-checkpoint-tmp` folders excluded)."""
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(str(workdir), "checkpoints", "*"))
                if os.path.basename(p).isdigit())


def restored_params(workdir, step):
  """The params of `workdir`'s checkpoint at `step`, as numpy."""
  import jax
  from hammer_jax import restore
  return jax.device_get(restore.restore(str(workdir), step).params["params"])


# -- tiny models ---------------------------------------------------------------------

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


def tiny_model_config(*, flat: bool = False, subtitles: bool = True, max_frames: int = 16, clip_len: int = 4,
                      max_query_len: int = 8, hidden: int = 32, **model_overrides):
  """The `tiny` variant (configs/variants.py) at unit-test sizes: vocabulary 64, `model_overrides` on config.model."""
  c = tiny_config()
  c.data.max_frames = max_frames        # FieldReferences: also sets config.model.max_frames etc.
  c.data.clip_len = clip_len
  c.data.max_query_len = max_query_len
  c.data.use_subtitles = subtitles
  c.model.bert.update(dict(vocab_size=VOCAB, hidden_size=hidden, num_heads=2, intermediate_size=2 * hidden,
                           max_position_embeddings=32))
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
  per config, so most tests use this; `build.init_random_params` itself is
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


# -- raw data and shards -------------------------------------------------------------

CLIP_SECONDS = 1.5


def feature_rows(name: str, rows: int, dim: int) -> np.ndarray:
  """float32 `[rows, dim]`, a fixed function of (name, row, column), never all-zero rows."""
  base = (zlib.crc32(name.encode("utf-8")) % 997) / 997.0
  r = np.arange(rows, dtype=np.float64)[:, None]
  k = np.arange(dim, dtype=np.float64)[None, :]
  return (np.sin(0.37 * r + 1.3 * k + 6.283 * base) + 0.001 * r + 1.5).astype(np.float32)


def write_h5(path: str, arrays: dict[str, np.ndarray]) -> str:
  with h5py.File(path, "w") as f:
    for k, v in arrays.items():
      f.create_dataset(k, data=v)
  return path


def write_jsonl(path: str, rows: list, raw_lines: dict[int, str] | None = None) -> str:
  """One JSON object a line; `raw_lines` {0-based index: text} replaces or inserts raw text."""
  lines = [json.dumps(r) for r in rows]
  for i, text in sorted((raw_lines or {}).items()):
    lines.insert(i, text)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path


def write_json(path: str, obj) -> str:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)
  return path


# -- TVR layout ------------------------------------------------------------------

def tvr_queries(names: list[str], durations: list[float], per_video: int = 2, first_desc_id: int = 0) -> list[dict]:
  """TVR-release query dicts, `per_video` per video, desc_ids consecutive from `first_desc_id`."""
  rows, desc_id = [], first_desc_id
  for name, dur in zip(names, durations):
    for j in range(per_video):
      st = round(dur * j / (per_video + 1), 2)
      ed = round(min(dur, st + dur / (per_video + 1) + 1.0), 2)
      rows.append({"vid_name": name, "duration": dur, "ts": [st, ed],
                   "desc": f"someone in {name} does thing number {j} with a cup",
                   "type": "v", "desc_id": desc_id})
      desc_id += 1
  return rows


def tvr_rows(duration: float) -> int:
  return max(1, math.ceil(duration / CLIP_SECONDS))


def tvr_video_features(names: list[str], durations: list[float], dim: int) -> dict[str, np.ndarray]:
  return {n: feature_rows(n, tvr_rows(d), dim) for n, d in zip(names, durations)}


def tvr_subtitle_features(names: list[str], durations: list[float], dim: int) -> dict[str, np.ndarray]:
  out = {}
  for n, d in zip(names, durations):
    rows = tvr_rows(d)
    mask = (np.arange(rows) % 3 != 0).astype(np.float32)
    out[n] = feature_rows("sub-" + n, rows, dim) * mask[:, None]
    out[n + "-mask"] = mask
  return out


class TvrInputs:
  """A tiny TVR corpus in a folder: `val.jsonl`, `video.h5` (width 6), `sub.h5` (width 5)."""

  VIDEO_DIM, SUB_DIM = 6, 5

  def __init__(self, root: str, n_videos: int = 4, per_video: int = 2, prefix: str = "show_s01e01_seg02_clip_",
               first_desc_id: int = 0):
    self.root = root
    os.makedirs(root, exist_ok=True)
    self.names = [f"{prefix}{i:02d}" for i in range(n_videos)]
    self.durations = [9.0 + 2.5 * i for i in range(n_videos)]
    self.queries = tvr_queries(self.names, self.durations, per_video, first_desc_id)
    self.video = tvr_video_features(self.names, self.durations, self.VIDEO_DIM)
    self.sub = tvr_subtitle_features(self.names, self.durations, self.SUB_DIM)
    self.jsonl = os.path.join(root, "val.jsonl")
    self.video_h5 = os.path.join(root, "video.h5")
    self.sub_h5 = os.path.join(root, "sub.h5")
    self.write()

  def write(self, raw_lines: dict[int, str] | None = None):
    write_jsonl(self.jsonl, self.queries, raw_lines)
    write_h5(self.video_h5, self.video)
    write_h5(self.sub_h5, self.sub)
    return self

  def kwargs(self, split: str = "val", **extra) -> dict:
    return dict(split_files={split: self.jsonl}, video_feature=[self.video_h5], subtitle_feature=self.sub_h5,
                **extra)


# -- ActivityNet layout ----------------------------------------------------------

def anet_annotations(n_videos: int = 3) -> dict:
  out = {}
  for i in range(n_videos):
    dur = 20.0 + 7.5 * i
    out[f"v_anet{i:03d}"] = {"duration": dur, "timestamps": [[0.0, dur / 2], [dur / 3, dur - 1]],
                             "sentences": [f"A person starts activity {i}.", f" Then activity {i} ends. "]}
  return out


def anet_features(ann: dict, dim: int = 4) -> dict[str, np.ndarray]:
  return {v: feature_rows(v, max(1, round(r["duration"])), dim) for v, r in ann.items()}


# -- prepared shards -------------------------------------------------------------

def data_folder(out_dir: str) -> str:
  """The folder holding a prepared dataset's records: the one prepared.json names, else the one being built."""
  manifest = os.path.join(out_dir, "prepared.json")
  if os.path.exists(manifest):
    return os.path.join(out_dir, json.load(open(manifest))["data_folder"])
  building = sorted(glob.glob(os.path.join(out_dir, "data-*")))
  assert len(building) == 1, building
  return building[0]


def shard_files(out_dir: str, dataset: str = "videos", split: str | None = None) -> list[str]:
  pattern = f"{dataset}-{split}.tfrecord-*" if split else f"{dataset}-*.tfrecord-*"
  return sorted(glob.glob(os.path.join(data_folder(out_dir), dataset, "1.0.0", pattern)))


def tfrecord_offsets(path: str) -> list[tuple[int, int]]:
  """(start of the data, data length) of every record of a TFRecord file."""
  out, pos = [], 0
  with open(path, "rb") as f:
    blob = f.read()
  while pos < len(blob):
    n = int.from_bytes(blob[pos:pos + 8], "little")
    out.append((pos + 12, n))
    pos += 12 + n + 4
  return out


def corrupt_record(path: str, record: int = 0) -> None:
  """Flips bytes in the middle of one record's data (its CRC no longer matches)."""
  start, n = tfrecord_offsets(path)[record]
  with open(path, "r+b") as f:
    f.seek(start + n // 2)
    chunk = bytearray(f.read(4))
    f.seek(start + n // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def truncate_in_record(path: str, record: int = -1) -> None:
  """Cuts the file in the middle of one record's data."""
  start, n = tfrecord_offsets(path)[record]
  with open(path, "r+b") as f:
    f.truncate(start + n // 2)
