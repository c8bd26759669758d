"""Small raw inputs (TVR and ActivityNet layouts) and shard helpers for the data tests.

Feature values are a deterministic, non-linear function of (video name, row,
column) so a test can recompute exactly what went into a feature file.
"""

from __future__ import annotations

import glob
import json
import math
import os
import zlib

import h5py
import numpy as np

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

def shard_files(out_dir: str, dataset: str = "videos", split: str | None = None) -> list[str]:
  pattern = f"{dataset}-{split}.tfrecord-*" if split else f"{dataset}-*.tfrecord-*"
  return sorted(glob.glob(os.path.join(out_dir, dataset, "1.0.0", pattern)))


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
