"""tf.data input pipeline: prepared shards -> fixed-shape batches -> global arrays.

Training (`TrainBatches`): each JAX process reads its own contiguous range of the
split's video records (`process_range`), so processes see disjoint videos whose
union is the split. One epoch = every query of the range once: video records are
read in a per-epoch shuffled file order, flat-mapped into one example per query
(the video's features are shared, not copied), shuffled with a per-epoch seed and
batched. Everything is a function of (seed, epoch), so a run restarted at step s
skips straight to epoch `s*B // n` and re-reads at most one epoch to land on
exactly the next unseen example. MLM masking and VR negatives are drawn per batch
on the host from numpy generators keyed by (seed, step, process), so they too are
identical after a restart.

Moments beyond the frame cut: a video longer than `max_frames` rows is cut to its
first `max_frames`; a training query whose moment ends after the cut would get
a wrong end label and a VR positive without its moment, so it is left out of
training (counted and logged when the pipeline starts; `fitting_queries`).
Evaluation keeps every query: a moment past the cut counts as missed. On TVR
(96 frames = 144 s) that is 9 of the 10,895 val queries; 124 of the 17,435
train videos are longer than 144 s.

Evaluation: `eval_video_batches` streams the split's corpus once (for caching
video-only model parts) and `eval_query_batches` gives every query exactly once;
both pad the last batch (`example_mask` 0) and give every process the same
number of batches, which global arrays need.

Batch keys and shapes: docs/data_format.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from configs.base import ConfigError
from hammer_jax.data import alignment, sampling, shards
from hammer_jax.data.shards import ShardError  # noqa: F401  (what a bad shard raises, named where it is read)
from hammer_jax.data.prepared_data import PreparedData, PreparedDataError

HOST_ONLY_KEYS = ("desc_id",)  # int64 ids stay on the host; devices get the rest.


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  """What the pipeline needs from `config.data` (defaults: configs/base.py)."""
  max_frames: int
  max_query_len: int
  clip_len: int
  num_negatives: int
  mlm_probability: float
  max_mlm_predictions: int
  mlm_seed: int
  shuffle_buffer: int
  use_subtitles: bool
  num_readers: int

  @classmethod
  def from_config(cls, data_config) -> "PipelineSpec":
    return cls(**{f.name: data_config[f.name] for f in dataclasses.fields(cls)})


def process_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous, disjoint `[start, end)` ranges of n items covering all of them."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _pad_rows(x, rows: int):
  """`[n, ...]` -> `[rows, ...]`: truncated or zero-padded along the first axis."""
  import tensorflow as tf
  x = x[:rows]
  pad = [[0, rows - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
  return tf.pad(x, pad)


def _query_tokens(token_ids, max_len: int):
  """`[n]` -> padded `[max_len]` ids and mask (alignment.truncate_query)."""
  import tensorflow as tf
  import tensorflow.experimental.numpy as tnp
  ids = alignment.truncate_query(token_ids, max_len, xp=tnp)
  mask = tf.ones_like(ids)
  return _pad_rows(ids, max_len), _pad_rows(mask, max_len)


def _video_fields(rec: dict[str, Any], spec: PipelineSpec, with_subtitles: bool) -> dict[str, Any]:
  import tensorflow as tf
  n = tf.minimum(tf.shape(rec["video"])[0], spec.max_frames)
  out = {
      "video": _pad_rows(rec["video"], spec.max_frames),
      "frame_mask": tf.cast(tf.range(spec.max_frames) < n, tf.int32),
      "video_index": tf.cast(rec["video_index"], tf.int32),
      "duration": rec["duration"],
      "frame_seconds": rec["frame_seconds"],
  }
  if with_subtitles:
    out["subtitle"] = _pad_rows(rec["subtitle"], spec.max_frames)
  return out, n


def _labels(st, ed, frame_seconds, n, spec: PipelineSpec) -> dict[str, Any]:
  """Frame- and clip-level TL labels of one example."""
  import tensorflow as tf
  import tensorflow.experimental.numpy as tnp
  start, end = (tf.cast(x, tf.int32) for x in alignment.seconds_to_frames(
      st, ed, frame_seconds, tf.cast(n, frame_seconds.dtype), xp=tnp))
  frames = tf.range(spec.max_frames)
  is_b = tf.cast(frames == start, tf.float32)
  is_e = tf.cast(frames == end, tf.float32)
  valid = tf.cast(frames < n, tf.float32)
  # A one-frame moment is both B and E: split the target mass between them.
  both = is_b * is_e
  b = is_b - 0.5 * both
  e = is_e - 0.5 * both
  o = valid * (1.0 - is_b) * (1.0 - is_e)
  return {"start_frame": start, "end_frame": end,
          "start_clip": start // spec.clip_len, "end_clip": end // spec.clip_len,
          "frame_labels": tf.stack([b, e, o], axis=-1)}


class _Reader:
  """One reader of the training stream: a contiguous range of the split's videos, batches of `batch_size`.

  Everything is a function of (seed, epoch) and the reader's range, so a reader
  produces the same examples whichever process runs it.
  """

  def __init__(self, data: PreparedData, split: str, spec: PipelineSpec, *, reader: int, num_readers: int,
               batch_size: int, seed: int, start_step: int, per_video: np.ndarray, filter_cut: bool):
    import tensorflow as tf
    self.spec, self.seed = spec, seed
    info = data.split(split)
    self.with_subtitles = bool(data.subtitle_dim) and spec.use_subtitles
    start, end = process_range(info["num_videos"], reader, num_readers)
    self.filter_cut = filter_cut  # per_video counts only the queries the filter keeps
    self.num_examples = int(per_video[start:end].sum())
    if self.num_examples == 0:
      raise ValueError(f"{data.path}: split '{split}' has no queries for reader {reader} of {num_readers}")
    builder = data.builder("videos")
    self.instructions = builder.info.splits[f"{split}[{start}:{end}]"].file_instructions
    self._features = builder.info.features
    first_epoch, skip = divmod(start_step * batch_size, self.num_examples)
    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(
        lambda e: self._epoch(e).skip(tf.where(e == first_epoch, tf.constant(skip, tf.int64),
                                                  tf.constant(0, tf.int64))))
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    self._iter = iter(ds.as_numpy_iterator())

  def next(self) -> dict[str, np.ndarray]:
    try:
      return next(self._iter)
    except shards.read_errors() as e:
      raise shards.find_bad_shard(self.instructions, e) from None

  def _epoch(self, epoch):
    """All queries of this reader's videos once, in an order fixed by (seed, epoch)."""
    import tensorflow as tf
    files = tf.constant([i.filename for i in self.instructions])
    skips = tf.constant([i.skip for i in self.instructions], tf.int64)
    takes = tf.constant([i.take for i in self.instructions], tf.int64)
    seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
    order = tf.random.experimental.stateless_shuffle(tf.range(len(self.instructions)), seed=seed)
    shard_slices = tf.data.Dataset.from_tensor_slices(
        (tf.gather(files, order), tf.gather(skips, order), tf.gather(takes, order)))
    records = shard_slices.interleave(shards.records, cycle_length=min(4, len(self.instructions)), block_length=1,
                                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    examples = records.map(self._features.deserialize_example, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True).flat_map(self._examples_of_video)
    buffer_seed = epoch * 1_000_003 + self.seed
    return examples.shuffle(max(1, self.spec.shuffle_buffer), seed=buffer_seed)

  def _examples_of_video(self, rec):
    """One video record -> one padded example per query (features shared)."""
    import tensorflow as tf
    video, n = _video_fields(rec, self.spec, self.with_subtitles)
    q = rec["queries"]

    def one(desc_id, st, ed, token_ids):
      ids, mask = _query_tokens(token_ids, self.spec.max_query_len)
      ex = dict(video, desc_id=desc_id, query_ids=ids, query_mask=mask)
      ex.update(_labels(st, ed, rec["frame_seconds"], n, self.spec))
      return ex

    def fits(desc_id, st, ed, token_ids):
      import tensorflow.experimental.numpy as tnp
      rows = tf.cast(tf.shape(rec["video"])[0], rec["frame_seconds"].dtype)
      _, last = alignment.seconds_to_frames(st, ed, rec["frame_seconds"], rows, xp=tnp)
      return last < self.spec.max_frames

    per_query = tf.data.Dataset.from_tensor_slices((q["desc_id"], q["st"], q["ed"], q["token_ids"]))
    if self.filter_cut:
      per_query = per_query.filter(fits)
    return per_query.map(one)



class TrainBatches:
  """Infinite, deterministic, resumable training batches of one process (numpy dicts).

  The global batch is made of `spec.num_readers` reader streams (0: one per
  process), each over its own contiguous range of the split's videos; a process
  runs the readers of its rows of the global batch. With the same number of
  readers, one process and several produce the same global batches (and MLM
  masks and negatives, which are drawn per reader block), so a run can move to
  another topology and continue exactly.

  Args:
    data: prepared corpus.
    split: usually "train".
    spec: pipeline settings (config.data).
    local_batch_size: examples per step from this process (global / process_count).
    seed: data-order seed (config.seed).
    start_step: first step to produce (resuming).
    global_offset: row of this process's first example in the global batch
      (`neg_index` is global; see `local_batch_offset`).
  """

  def __init__(self, data: PreparedData, split: str, spec: PipelineSpec, *, local_batch_size: int,
               seed: int, start_step: int = 0, process_index: int | None = None,
               process_count: int | None = None, global_offset: int = 0):
    if not data.has_queries:
      raise PreparedDataError(f"{data.path}: a corpus prepared without queries (data_prep.corpus) cannot be trained "
                              "on; it is for search (python -m hammer_jax.search --prepared_dir)")
    self.spec, self.seed, self.step = spec, seed, start_step
    self.local_batch_size, self.global_offset = local_batch_size, global_offset
    self.process_index, self.process_count = _process(process_index, process_count)
    num_readers = spec.num_readers or self.process_count
    if num_readers % self.process_count:
      raise ConfigError(f"data.num_readers={num_readers} does not divide over {self.process_count} processes")
    per_process = num_readers // self.process_count
    if local_batch_size % per_process:
      raise ConfigError(f"the per-process batch {local_batch_size} does not divide over its {per_process} readers "
                       f"(data.num_readers={num_readers})")
    self.block = local_batch_size // per_process
    self.readers = range(self.process_index * per_process, (self.process_index + 1) * per_process)
    self.special = data.manifest["special_token_ids"]
    self.vocab_size = int(data.manifest["vocab_size"])
    info = data.split(split)
    fitting = fitting_queries(data, split, spec.max_frames)
    per_video = fitting if fitting is not None else np.asarray(info["queries_per_video"])
    if fitting is not None and self.process_index == 0:
      from absl import logging
      total, kept = int(sum(info["queries_per_video"])), int(fitting.sum())
      if kept < total:
        logging.info("%s: %d of %d %s queries left out of training: their moment ends after the first %d frames",
                     data.path, total - kept, total, split, spec.max_frames)
    self._readers = [_Reader(data, split, spec, reader=r, num_readers=num_readers, batch_size=self.block, seed=seed,
                             start_step=start_step, per_video=per_video, filter_cut=fitting is not None)
                     for r in self.readers]
    self.num_examples = sum(r.num_examples for r in self._readers)
    self.instructions = [i for r in self._readers for i in r.instructions]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    blocks = []
    for i, (reader_id, reader) in enumerate(zip(self.readers, self._readers)):
      batch = reader.next()
      rng = np.random.default_rng([self.spec.mlm_seed, self.step, reader_id])
      batch.update(sampling.mask_tokens(batch["query_ids"], batch["query_mask"], rng, self.spec, self.special,
                                        self.vocab_size))
      rng = np.random.default_rng([self.seed, self.step, reader_id, 7])
      batch["neg_index"], batch["neg_mask"] = sampling.sample_negatives(
          batch["video_index"], self.spec.num_negatives, rng, self.global_offset + i * self.block)
      blocks.append(batch)
    batch = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]} if len(blocks) > 1 else blocks[0]
    batch["example_mask"] = np.ones(self.local_batch_size, np.int32)
    self.step += 1
    return batch


def fitting_queries(data: PreparedData, split: str, max_frames: int) -> np.ndarray | None:
  """Per video of `split` (stored order), its queries whose moment ends within the first `max_frames` rows.

  The same rule (alignment.seconds_to_frames, float32) as the training pipeline's
  filter. None for data prepared before the manifest recorded rows per video.
  """
  from hammer_jax.data.prepared_data import read_queries
  info = data.split(split)
  if "video_rows" not in info:
    return None
  rows = np.asarray(info["video_rows"], np.float32)
  seconds = np.asarray(info["video_frame_seconds"], np.float32)
  queries = read_queries(data, split)
  v = queries.video_index
  _, last = alignment.seconds_to_frames(queries.st, queries.ed, seconds[v], rows[v])
  return np.bincount(v[last < max_frames], minlength=len(rows)).astype(np.int64)


def _eval_batches(n: int, batch_size: int, process_index: int, process_count: int):
  """This process's `[start, end)` and a batch count that is equal on every process."""
  start, end = process_range(n, process_index, process_count)
  per_process = -(-n // process_count)
  return start, end, max(1, -(-per_process // batch_size))


def eval_video_batches(data: PreparedData, split: str, spec: PipelineSpec, batch_size: int, *,
                       process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """The split's corpus once, in stored order: this process's share, last batch padded."""
  import tensorflow as tf
  pi, pc = _process(process_index, process_count)
  info = data.split(split)
  start, end, num_batches = _eval_batches(info["num_videos"], batch_size, pi, pc)
  with_subtitles = bool(data.subtitle_dim) and spec.use_subtitles
  builder = data.builder("videos")
  instructions = builder.info.splits[f"{split}[{start}:{end}]"].file_instructions if end > start else []
  empty = {"video": np.zeros((spec.max_frames, data.video_dim), np.float32),
           "frame_mask": np.zeros(spec.max_frames, np.int32), "video_index": np.int32(-1),
           "duration": np.float32(0), "frame_seconds": np.float32(1), "example_mask": np.int32(0)}
  if with_subtitles:
    empty["subtitle"] = np.zeros((spec.max_frames, data.subtitle_dim), np.float32)

  def fields(rec):
    out, _ = _video_fields(rec, spec, with_subtitles)
    out["example_mask"] = tf.constant(1, tf.int32)
    return out

  records = iter(())
  if instructions:
    ds = tf.data.Dataset.from_tensor_slices(
        ([i.filename for i in instructions], np.array([i.skip for i in instructions], np.int64),
         np.array([i.take for i in instructions], np.int64)))
    ds = ds.flat_map(shards.records)
    ds = ds.map(builder.info.features.deserialize_example, num_parallel_calls=tf.data.AUTOTUNE)
    records = ds.map(fields, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4).as_numpy_iterator()
  for _ in range(num_batches):
    rows = []
    try:
      for rec in records:
        rows.append(rec)
        if len(rows) == batch_size:
          break
    except shards.read_errors() as e:
      raise shards.find_bad_shard(instructions, e) from None
    rows += [empty] * (batch_size - len(rows))
    yield {k: np.stack([r[k] for r in rows]) for k in empty}


def eval_query_batches(token_ids: list[np.ndarray], max_query_len: int, batch_size: int, *,
                       process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every query of this process's share of `token_ids` exactly once, last batch padded.

  The mask marks each query's own tokens (not "id != 0": the pad id is the
  tokenizer's business); padding rows have `example_mask` 0.
  """
  pi, pc = _process(process_index, process_count)
  start, end, num_batches = _eval_batches(len(token_ids), batch_size, pi, pc)
  for b in range(num_batches):
    rows = np.arange(start + b * batch_size, start + (b + 1) * batch_size)
    ids = np.zeros((batch_size, max_query_len), np.int32)
    mask = np.zeros((batch_size, max_query_len), np.int32)
    for j, r in enumerate(rows[rows < end]):
      t = alignment.truncate_query(np.asarray(token_ids[r], np.int32), max_query_len)
      ids[j, :len(t)], mask[j, :len(t)] = t, 1
    real = rows < end
    yield {"query_ids": ids, "query_mask": mask, "query_index": np.where(real, rows, -1).astype(np.int32),
           "example_mask": real.astype(np.int32)}


def local_batch_offset(mesh, global_batch: int, axis: str = "data") -> int:
  """Row of this process's first example in a global batch sharded over `axis`."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  sharding = NamedSharding(mesh, PartitionSpec(axis))
  slices = [idx[0] for idx in sharding.addressable_devices_indices_map((global_batch,)).values()]
  starts = sorted({s.start or 0 for s in slices})
  stops = sorted({s.stop if s.stop is not None else global_batch for s in slices})
  if stops[-1] - starts[0] != global_batch // jax.process_count():
    raise ValueError("this process's rows of the global batch are not contiguous on the mesh")
  return starts[0]


def make_global_batch(batch: dict[str, np.ndarray], mesh, axis: str = "data") -> dict[str, Any]:
  """Per-process numpy batch -> global jax.Arrays sharded over the mesh's `axis`."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  sharding = NamedSharding(mesh, PartitionSpec(axis))
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items() if k not in HOST_ONLY_KEYS}
