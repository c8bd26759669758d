r"""A store of every video's video-only parts, read by corpus position: what the re-rank reads per query.

Two-stage retrieval re-scores the first stage's top K videos (retrieve.py); it
needs those K videos' `Hammer.encode_video` parts, not the corpus's. The parts
cache of search (`corpus.Corpus`; 0.31 MB a video in float32 at the base
config's shapes) holds every video in memory: hundreds of GB at a million
videos. This store keeps them on disk or in a bucket, and
`StoredCorpus.take(rows)` reads the rows asked for.

Layout of `W/index/<corpus-id>_step<N>.store/` (built by `python -m
hammer_jax.index` beside the FAISS index, in the same shards):

  parts/<key>/   one zarr v3 array per part ("tokens", "frame_mask"), in the
                 dtype the model computes it in: [S, L, *shape] for S build
                 shards of at most L videos (video p of the corpus is row p -
                 start(s) of its build shard s, `Layout.locate`). Sharding codec:
                 one file holds `videos_per_file` consecutive videos of one
                 build shard, each video its own inner chunk, so a read of K
                 candidates is K ranged reads (plus each file's small index,
                 cached), and no file is shared by two build shards;
  done/shard-<s>.json  written after shard s's files: a killed build resumes at
                 the shards without one;
  building.json  what the files being written are (fingerprint + layout);
  videos.npz     video_index, duration, frame_seconds: [V] each, read whole;
  store.json     the stamp: `index_files.index_meta` of the build (fingerprints
                 of weights and corpus) + the layout. Written LAST, and removed
                 before a rebuild writes anything: a store without a stamp, or
                 with another fingerprint, is never used. That is how it is
                 replaced whole or not at all where a folder cannot be renamed
                 (a bucket).

Why TensorStore (zarr v3) and not ArrayRecord: the parts are fixed-shape arrays
read by integer key, which is what a chunked array is (a slice or point read
names its chunks; ArrayRecord reads records by index too, but each would be a
serialised array to decode, with no shape or dtype of its own); several
processes write disjoint chunks of one array with no coordination (each
ArrayRecord file has one writer, so readers would need a table of files);
TensorStore reads gs:// and s3:// natively with ranged reads through the same
spec (`files.tensorstore_kvstore`); and it is already a dependency, Orbax's
backend. ArrayRecord was not measured.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from hammer_jax import files
from hammer_jax.errors import HammerError
from hammer_jax.retrieval import index_files

STAMP, BUILDING, VIDEOS, DONE = "store.json", "building.json", "videos.npz", "done"
FORMAT = 1
VIDEOS_PER_FILE = 64       # videos per file of a part array (20 MB of tokens at the base config's shapes)
CACHE_BYTES = 16 << 20     # reader cache: the files' chunk indices (16 bytes a video), a few chunks
EXHAUSTIVE = ("exhaustive search needs the in-memory parts cache (every video's parts at once); search with "
              "--retrieval=exhaustive, which builds it under W/search_index/")


class StoreError(HammerError, ValueError):
  """A parts store that cannot be used as asked (one line that says how to rebuild it)."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each video's parts are: build shard s holds positions [start(s), end(s)) (process_range's split).

  parts: {key: (per-video shape, dtype name)}, e.g. {"tokens": ((n, K, 1+M, d), "float32"),
  "frame_mask": ((F,), "int32")}.
  """
  num_videos: int
  num_shards: int
  parts: dict[str, tuple[tuple[int, ...], str]]
  videos_per_file: int = VIDEOS_PER_FILE

  def shard_range(self, s: int) -> tuple[int, int]:
    # input_pipeline.process_range(num_videos, s, num_shards), which picks the build's shards.
    return self.num_videos * s // self.num_shards, self.num_videos * (s + 1) // self.num_shards

  @property
  def shard_len(self) -> int:
    """L: the longest build shard's videos."""
    return max(1, -(-self.num_videos // self.num_shards))

  @property
  def file_len(self) -> int:
    return max(1, min(self.videos_per_file, self.shard_len))

  def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(build shard, row within it) of corpus positions `rows` ([N] each)."""
    rows = np.asarray(rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= self.num_videos):
      raise IndexError(f"corpus positions must be in [0, {self.num_videos}), got {rows.min()}..{rows.max()}")
    starts = self.num_videos * np.arange(self.num_shards, dtype=np.int64) // self.num_shards
    shard = np.searchsorted(starts, rows, side="right") - 1
    return shard, rows - starts[shard]

  def bytes_per_video(self) -> int:
    """Stored bytes of one video (uncompressed chunks + 16 index bytes each), all parts."""
    return sum(int(np.prod(shape, dtype=np.int64)) * _dtype(dt).itemsize + 16 for shape, dt in self.parts.values())

  def to_json(self) -> dict[str, Any]:
    return {"num_videos": self.num_videos, "num_shards": self.num_shards, "videos_per_file": self.videos_per_file,
            "parts": {k: [list(shape), dt] for k, (shape, dt) in sorted(self.parts.items())}}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Layout":
    return cls(int(d["num_videos"]), int(d["num_shards"]),
               {k: (tuple(int(x) for x in shape), str(dt)) for k, (shape, dt) in d["parts"].items()},
               int(d["videos_per_file"]))


def _dtype(name: str) -> np.dtype:
  import ml_dtypes  # bfloat16 (a model computing in bfloat16 gives bfloat16 parts)
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _array_spec(path: str, key: str, layout: Layout | None = None) -> dict[str, Any]:
  kvstore = files.tensorstore_kvstore(path)
  kvstore["path"] += f"parts/{key}/"
  spec: dict[str, Any] = {"driver": "zarr3", "kvstore": kvstore}
  if layout is not None:
    shape, dtype = layout.parts[key]
    raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
    spec["metadata"] = {
        "shape": [layout.num_shards, layout.shard_len, *shape], "data_type": dtype, "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, layout.file_len, *shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},  # one folder of files
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, 1, *shape], "codecs": raw, "index_codecs": raw + [{"name": "crc32c"}],
            "index_location": "end"}}]}
  return spec


def _read_json(path: str) -> dict[str, Any] | None:
  """A JSON object file, or None when it is missing or unreadable (a store's stamps)."""
  try:
    value = json.loads(files.read_text(path))
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return value if isinstance(value, dict) else None


def read_stamp(path: str) -> dict[str, Any] | None:
  """The store's `store.json` (meta + layout), or None when the store is absent or its build did not finish."""
  return _read_json(files.join(path, STAMP))


# -- writing ------------------------------------------------------------------------


class StoreWriter:
  """Writes a store shard by shard; several processes may write disjoint shards at once.

  `prepare()` (one process, before the others write), then per build shard s
  `shard(s)`: `.add(parts)` batches of its videos in order, `.close()`; then
  `finish(...)` (one process, after every shard is closed).
  """

  def __init__(self, path: str, layout: Layout, fingerprint: str):
    self.path, self.layout, self.fingerprint = path, layout, fingerprint
    self._arrays: dict[str, Any] = {}

  def _building(self) -> dict[str, Any]:
    return {"fingerprint": self.fingerprint, "format": FORMAT, "layout": self.layout.to_json()}

  def prepare(self) -> None:
    """Starts or resumes: a store of anything else is deleted; the stamp goes before any file is written."""
    import tensorstore as ts
    if _read_json(files.join(self.path, BUILDING)) != self._building():
      files.rmtree(self.path)
      for key in self.layout.parts:
        ts.open(_array_spec(self.path, key, self.layout), create=True, delete_existing=True).result()
      files.atomic_write(files.join(self.path, BUILDING), json.dumps(self._building()))
    files.remove(files.join(self.path, STAMP))

  def done(self) -> set[int]:
    """Build shards whose files are all written."""
    names = set(files.listdir(files.join(self.path, DONE)))
    return {s for s in range(self.layout.num_shards) if f"shard-{s:05d}.json" in names}

  def shard(self, s: int) -> "_ShardWriter":
    import tensorstore as ts
    if not self._arrays:
      self._arrays = {k: ts.open(_array_spec(self.path, k), open=True, write=True).result()
                      for k in self.layout.parts}
    return _ShardWriter(self, s)

  def finish(self, meta: dict[str, Any], video_index: np.ndarray, duration: np.ndarray,
             frame_seconds: np.ndarray) -> None:
    """The per-video arrays, then the stamp (last: from here on the store is used)."""
    missing = sorted(set(range(self.layout.num_shards)) - self.done())
    if missing:
      raise StoreError(f"{self.path}: shards {missing[:5]} are not written; run python -m hammer_jax.index again")
    files.atomic_write_npz(files.join(self.path, VIDEOS), dict(
        video_index=np.asarray(video_index, np.int64), duration=np.asarray(duration, np.float32),
        frame_seconds=np.asarray(frame_seconds, np.float32)))
    files.atomic_write(files.join(self.path, STAMP), json.dumps(dict(
        meta, format=FORMAT, layout=self.layout.to_json(), bytes_per_video=self.layout.bytes_per_video()), indent=1))


class _ShardWriter:
  """Videos of one build shard, in order; each file (`file_len` videos) is written whole, once."""

  def __init__(self, writer: StoreWriter, s: int):
    self.writer, self.s = writer, s
    start, end = writer.layout.shard_range(s)
    self.size, self.offset = end - start, 0
    self.buffer: list[dict[str, np.ndarray]] = []
    self.pending: list[Any] = []

  def add(self, parts: dict[str, np.ndarray]) -> None:
    """Appends the next videos' parts ({key: [b, *shape]}, `encode_video`'s output rows)."""
    layout = self.writer.layout
    for key, (shape, dtype) in layout.parts.items():
      got = parts[key]
      if tuple(got.shape[1:]) != shape or got.dtype != _dtype(dtype):
        raise StoreError(f"{self.writer.path}: part {key} is {got.dtype}{list(got.shape[1:])}, the store's "
                         f"{dtype}{list(shape)}")
    self.buffer.append(parts)
    while sum(len(p["frame_mask"]) for p in self.buffer) >= layout.file_len:
      self._write(layout.file_len)

  def _write(self, n: int) -> None:
    rows = {k: np.concatenate([p[k] for p in self.buffer]) for k in self.writer.layout.parts}
    if self.offset + n > self.size:
      raise StoreError(f"{self.writer.path}: shard {self.s} got more than its {self.size} videos")
    self.buffer = [{k: v[n:] for k, v in rows.items()}] if len(rows["frame_mask"]) > n else []
    # At most two files in flight: the build's memory stays that of a file or two, whatever the corpus.
    while len(self.pending) > 1:
      self.pending.pop(0).result()
    for key, arr in self.writer._arrays.items():  # pylint: disable=protected-access
      self.pending.append(arr[self.s, self.offset:self.offset + n].write(rows[key][:n]))
    self.offset += n

  def close(self) -> None:
    """Writes what is left, waits for every file, then the shard's done-marker."""
    left = sum(len(p["frame_mask"]) for p in self.buffer)
    if left:
      self._write(left)
    for future in self.pending:
      future.result()
    if self.offset != self.size:
      raise StoreError(f"{self.writer.path}: shard {self.s} got {self.offset} of its {self.size} videos")
    files.atomic_write(files.join(self.writer.path, DONE, f"shard-{self.s:05d}.json"),
                       json.dumps({"videos": self.size}))


# -- reading ------------------------------------------------------------------------


def open_store(path: str, *, cache_bytes: int = CACHE_BYTES) -> "StoredCorpus":
  """The `StoredCorpus` of a finished store (its stamp present); StoreError otherwise.

  The caller compares `corpus.meta` with what it scores with (`index_files.check_meta`).
  """
  import tensorstore as ts
  stamp = read_stamp(path)
  if stamp is None or stamp.get("format") != FORMAT or "layout" not in stamp:
    why = "no such store" if not files.exists(path) else "no store.json: its build did not finish"
    raise StoreError(f"{path}: not a finished parts store ({why}); build it with python -m hammer_jax.index")
  layout = Layout.from_json(stamp["layout"])
  context = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})

  def read(local: str):
    with np.load(local, allow_pickle=False) as z:
      return z["video_index"], z["duration"], z["frame_seconds"]

  video_index, duration, frame_seconds = index_files.load_file(
      files.join(path, VIDEOS), lambda p: files.download(p, read), "parts store's video table",
      "rebuild it with python -m hammer_jax.index")
  try:
    arrays = {k: ts.open(_array_spec(path, k), read=True, context=context).result() for k in layout.parts}
  except ValueError as e:
    raise index_files.UnreadableIndexError(path, "parts store", (str(e).splitlines() or [""])[0][:200],
                                           "rebuild it with python -m hammer_jax.index") from None
  return StoredCorpus(path, stamp, layout, arrays, video_index, duration, frame_seconds)


class StoredCorpus:
  """`Corpus`'s interface for retrieval that reads only the videos asked for (`take`) from a store.

  video_index, duration, frame_seconds: [V] (in memory: a few MB at a million
  videos). `rows_read` counts the distinct videos `take` has read, `takes` its
  calls.
  Every video's parts at once (`parts`, `frame_mask`) is refused: that is the
  in-memory cache's job (exhaustive search).
  """

  def __init__(self, path: str, meta: dict[str, Any], layout: Layout, arrays: dict[str, Any],
               video_index: np.ndarray, duration: np.ndarray, frame_seconds: np.ndarray):
    self.path, self.meta, self.layout, self._arrays = path, meta, layout, arrays
    self.video_index, self.duration, self.frame_seconds = video_index, duration, frame_seconds
    self.rows_read, self.takes = 0, 0

  def __len__(self) -> int:
    return len(self.video_index)

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """`encode_video`-shaped parts of the videos at corpus positions `rows` ([N] -> leading dim N).

    Each distinct video is read once (a program's padding repeats its last row).
    """
    unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    shard, offset = self.layout.locate(unique)
    self.rows_read, self.takes = self.rows_read + len(unique), self.takes + 1
    if not len(unique):
      return {k: np.zeros((0, *shape), _dtype(dt)) for k, (shape, dt) in self.layout.parts.items()}
    futures = {k: arr.vindex[shard, offset].read() for k, arr in self._arrays.items()}  # all parts at once
    try:
      return {k: f.result()[inverse.reshape(-1)] for k, f in futures.items()}
    except ValueError as e:  # a chunk file removed or damaged under a running searcher
      raise index_files.UnreadableIndexError(self.path, "parts store", (str(e).splitlines() or [""])[0][:200],
                                             "rebuild it with python -m hammer_jax.index") from None

  def positions_of(self, video_index: np.ndarray) -> np.ndarray:
    """Corpus positions of split positions `video_index` ([N]; -1 where a video is not in the corpus)."""
    from hammer_jax.retrieval.corpus import positions_of
    return positions_of(self.video_index, video_index)

  @property
  def parts(self):
    raise StoreError(f"{self.path}: {EXHAUSTIVE}")

  @property
  def frame_mask(self):
    raise StoreError(f"{self.path}: {EXHAUSTIVE}")
