"""Record schemas of prepared data, the one-line data error, and the repair log.

Prepared data is two TFDS-readable datasets per source (see docs/data_format.md):
`videos` (one record per video: features stored once, plus the video's queries
with ground truth, so training never duplicates features per query) and
`queries` (one record per query, small: the eval binary reads all of them).
The schemas live here so the writer and every reader agree.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from hammer_jax.data import prepared_data

DATASET_VERSION = prepared_data.DATASET_VERSION  # The format is defined where it is read.

PREPARED_FORMAT_VERSION = 2  # 2: features stored as raw bytes (Encoding.BYTES)


class DataError(ValueError):
  """Bad input. The message is one line naming the file, the record and the field."""

  def __init__(self, path: str, record: str, field: str, problem: str):
    self.path, self.record, self.field, self.problem = path, record, field, problem
    super().__init__(f"{path}: {record}: field '{field}': {problem}")


class ArgumentError(DataError):
  """A flag (or keyword argument) value preparation cannot work with; one line naming the flag."""

  def __init__(self, flag: str, value: Any, problem: str):
    DataError.__init__(self, f"--{flag}", "<flag>", flag, problem)
    ValueError.__init__(self, f"--{flag}={value}: {problem}")


def require_at_least(flag: str, value: int | float, minimum: int | float, what: str) -> None:
  """Refuses a numeric flag below `minimum` before anything is read (0 would divide by zero deep inside)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
    raise ArgumentError(flag, value, f"must be at least {minimum} ({what})")


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # desc_id and video_index are stored as int64


@dataclasses.dataclass
class Query:
  """One query with its ground truth (st = ed = 0 and vid_name = "" when unknown)."""
  desc_id: int
  desc: str
  vid_name: str = ""
  st: float = 0.0
  ed: float = 0.0
  duration: float = 0.0
  type: str = ""
  token_ids: np.ndarray | None = None  # int32 [n_tokens], [CLS] ... [SEP]
  where: str = ""                       # its record in the annotation file ("line 12 (desc_id 3)"), for errors


@dataclasses.dataclass
class VideoEntry:
  """A video of a split before its features are read."""
  vid_name: str
  video_index: int
  duration: float
  queries: list[Query]


class RepairLog:
  """Counts repaired, dropped and noted (kept as they are, but worth knowing) records by reason,
  with a few examples each."""

  KINDS = ("repaired", "dropped", "noted")

  def __init__(self):
    self.repaired: collections.Counter = collections.Counter()
    self.dropped: collections.Counter = collections.Counter()
    self.noted: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def repair(self, reason: str, example: str):
    self.repaired[reason] += 1
    if len(self.examples[reason]) < 3:
      self.examples[reason].append(example)

  def drop(self, reason: str, example: str):
    self.dropped[reason] += 1
    if len(self.examples[reason]) < 3:
      self.examples[reason].append(example)

  def note(self, reason: str, example: str):
    self.noted[reason] += 1
    if len(self.examples[reason]) < 3:
      self.examples[reason].append(example)

  def merge(self, other: dict[str, Any]):
    """Adds counts (and examples) saved by `to_dict`, e.g. of shards written by an earlier run."""
    for kind in self.KINDS:
      getattr(self, kind).update(other.get(kind, {}))
    for reason, examples in other.get("examples", {}).items():
      self.examples[reason].extend(examples[:3 - len(self.examples[reason])])

  def to_dict(self) -> dict[str, Any]:
    return {**{kind: dict(getattr(self, kind)) for kind in self.KINDS},
            "examples": {k: v for k, v in self.examples.items()}}


ZERO_ROWS = "videos with all-zero visual rows (kept: padding or black frames are valid input)"
ALL_ZERO = "videos whose every visual row is zero (kept; a failed feature extraction?)"


def note_zero_rows(video: np.ndarray, name: str, log: RepairLog) -> None:
  """The rule for all-zero feature rows: kept as they are, and counted in the summary.

  A zero row is legitimate (padding, a black frame), so it is not refused; a video
  with only zero rows carries nothing to localise in, so it is counted apart.
  """
  zero = ~np.any(video != 0, axis=-1)
  if zero.all():
    log.note(ALL_ZERO, name)
  elif zero.any():
    log.note(ZERO_ROWS, f"{name} ({int(zero.sum())} of {len(zero)} rows)")


def video_features(video_dim: int, subtitle_dim: int):
  """TFDS features of a `videos` record. subtitle_dim == 0: no subtitle stream."""
  import tensorflow_datasets as tfds  # Deferred: keeps `import data_prep.records` light.
  f = tfds.features
  spec = {
      "vid_name": f.Text(),
      "video_index": f.Scalar(np.int64),
      "duration": f.Scalar(np.float32),
      "frame_seconds": f.Scalar(np.float32),
      # Raw bytes, not a float list: ~48x faster to write and 1.6x faster to parse
      # (benchmarks/input_pipeline_benchmark.py).
      "video": f.Tensor(shape=(None, video_dim), dtype=np.float32, encoding=f.Encoding.BYTES),
      "queries": f.Sequence({
          "desc_id": f.Scalar(np.int64),
          "st": f.Scalar(np.float32),
          "ed": f.Scalar(np.float32),
          "token_ids": f.Sequence(f.Scalar(np.int32)),
      }),
  }
  if subtitle_dim:
    spec["subtitle"] = f.Tensor(shape=(None, subtitle_dim), dtype=np.float32, encoding=f.Encoding.BYTES)
    spec["subtitle_mask"] = f.Tensor(shape=(None,), dtype=np.int32, encoding=f.Encoding.BYTES)
  return f.FeaturesDict(spec)


def query_features():
  """TFDS features of a `queries` record."""
  import tensorflow_datasets as tfds
  f = tfds.features
  return f.FeaturesDict({
      "desc_id": f.Scalar(np.int64),
      "desc": f.Text(),
      "type": f.Text(),
      "vid_name": f.Text(),
      "video_index": f.Scalar(np.int64),
      "st": f.Scalar(np.float32),
      "ed": f.Scalar(np.float32),
      "duration": f.Scalar(np.float32),
      "token_ids": f.Sequence(f.Scalar(np.int32)),
  })


def video_example(entry: VideoEntry, frame_seconds: float, video: np.ndarray,
                  subtitle: np.ndarray | None, subtitle_mask: np.ndarray | None) -> dict[str, Any]:
  """The dict that `video_features(...).serialize_example` takes."""
  qs = entry.queries
  ex = {
      "vid_name": entry.vid_name,
      "video_index": entry.video_index,
      "duration": entry.duration,
      "frame_seconds": frame_seconds,
      "video": video,
      "queries": {
          "desc_id": np.array([q.desc_id for q in qs], np.int64),
          "st": np.array([q.st for q in qs], np.float32),
          "ed": np.array([q.ed for q in qs], np.float32),
          "token_ids": [q.token_ids for q in qs],
      },
  }
  if subtitle is not None:
    ex["subtitle"] = subtitle
    ex["subtitle_mask"] = subtitle_mask
  return ex


def query_example(q: Query, video_index: int) -> dict[str, Any]:
  return {"desc_id": q.desc_id, "desc": q.desc, "type": q.type, "vid_name": q.vid_name,
          "video_index": video_index, "st": q.st, "ed": q.ed, "duration": q.duration,
          "token_ids": q.token_ids}


def input_fingerprint(paths) -> dict[str, list[int]]:
  """(size, mtime) of each input file: a changed input invalidates finished shards."""
  import os
  out = {}
  for p in paths:
    if p and os.path.exists(p):
      st = os.stat(p)
      out[os.path.abspath(p)] = [st.st_size, st.st_mtime_ns]
  return out


def shuffled_for_training(entries: list[VideoEntry], seed: int = 0) -> list[VideoEntry]:
  """Stores training videos in a seeded random order, re-indexed.

  Official orders group videos by show; shuffling once at preparation makes every
  contiguous range of records (a shard, one host's part) a mix of the corpus, so
  file-level shuffling plus a modest buffer shuffles well at training time.
  """
  order = np.random.default_rng(seed).permutation(len(entries))
  return [VideoEntry(entries[i].vid_name, new, entries[i].duration, entries[i].queries)
          for new, i in enumerate(order)]
