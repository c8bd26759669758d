"""Reading the records of prepared TFRecord shards, and naming the shard behind a read error.

A damaged shard (cut, overwritten, fewer records than the metadata says) is a
one-line `ShardError` naming its file, found by re-reading each shard the
failed read covered (`find_bad_shard`).
"""

from __future__ import annotations


class ShardError(IOError):
  """A TFRecord shard is corrupted or truncated; the message names the shard."""


def read_errors() -> tuple[type[Exception], ...]:
  """What TensorFlow raises on a damaged shard (a function: TensorFlow is imported only when reading)."""
  import tensorflow as tf
  # FailedPrecondition: a shard with fewer records than its metadata says (cut at a boundary).
  return (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError)


def records(filename, skip, take):
  """Records `[skip, skip + take)` of one shard; fewer than `take` is an error, not a short epoch."""
  import tensorflow as tf
  return tf.data.TFRecordDataset(filename).skip(skip).take(take).apply(
      tf.data.experimental.assert_cardinality(take))


def find_bad_shard(instructions, error: Exception) -> ShardError:
  """Re-reads each shard to name the one behind a read error."""
  import tensorflow as tf
  seen = set()
  for ins in instructions:
    if ins.filename in seen:
      continue
    seen.add(ins.filename)
    try:
      count = sum(1 for _ in tf.data.TFRecordDataset(ins.filename))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      return ShardError(f"{ins.filename}: corrupted or truncated TFRecord shard ({e.message.splitlines()[0]})")
    if count != ins.examples_in_shard:
      return ShardError(f"{ins.filename}: truncated TFRecord shard ({count} records, metadata says "
                        f"{ins.examples_in_shard})")
  name = instructions[0].filename if instructions else "?"
  return ShardError(f"{name}: unreadable record ({getattr(error, 'message', str(error)).splitlines()[0]})")
