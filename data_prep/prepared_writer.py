"""Writes prepared data: TFRecord shards + TFDS metadata + `prepared.json`.

Why not a `tfds.core.GeneratorBasedBuilder`: TFDS builders restart a split from
scratch after an interruption (TVR train is ~17 GB of features) and take one
feature spec per dataset, while we need two linked record sets (videos with
their features once, and small query records) and per-shard resumption. So the
shards are written here, each atomically (temp file + rename, then a progress
record), and `tfds.folder_dataset.write_metadata` makes both folders ordinary
TFDS datasets that `tfds.builder_from_directory` and tf.data read.

A re-run with the same arguments skips every finished shard; a re-run with
different arguments (another tokenizer, other feature files) rewrites the split.
`prepared.json` is written last, so its presence means the data is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Any, Callable

import numpy as np

from data_prep import records
from hammer_jax import files
from data_prep.records import Query, RepairLog, VideoEntry
from hammer_jax.model import pretrained

# (video [rows, dim], subtitle [rows, sdim] | None, subtitle_mask [rows] | None, frame_seconds)
LoadedVideo = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]


def _shard_name(dataset: str, split: str, index: int, count: int) -> str:
  return f"{dataset}-{split}.tfrecord-{index:05d}-of-{count:05d}"


class PreparedWriter:
  """Writes the `videos` and `queries` datasets of one source into `out_dir`."""

  def __init__(self, out_dir: str, *, source: str, video_dim: int, subtitle_dim: int,
               checkpoint: str, vocab_sha256: str, build_args: dict[str, Any],
               videos_per_shard: int = 256, queries_per_shard: int = 50_000):
    self.out_dir = os.path.abspath(out_dir)
    self.source, self.video_dim, self.subtitle_dim = source, video_dim, subtitle_dim
    self.checkpoint, self.vocab_sha256 = checkpoint, vocab_sha256
    self.build_args = build_args
    self.videos_per_shard, self.queries_per_shard = videos_per_shard, queries_per_shard
    self.video_spec = records.video_features(video_dim, subtitle_dim)
    self.query_spec = records.query_features()
    self.dirs = {name: os.path.join(self.out_dir, name, records.DATASET_VERSION)
                 for name in ("videos", "queries")}
    for d in self.dirs.values():
      os.makedirs(d, exist_ok=True)
    self.splits: dict[str, dict[str, Any]] = {}
    # prepared.json means "complete": take it away while we write, and keep its
    # content so splits prepared by an earlier run survive in the new manifest.
    manifest_path = os.path.join(self.out_dir, "prepared.json")
    previous_path = os.path.join(self.out_dir, ".progress", "prepared.previous.json")
    os.makedirs(os.path.dirname(previous_path), exist_ok=True)
    if os.path.exists(manifest_path):
      os.replace(manifest_path, previous_path)
    self.previous = json.load(open(previous_path)) if os.path.exists(previous_path) else None

  # -- one split -------------------------------------------------------------

  def _progress_dir(self, split: str) -> str:
    return os.path.join(self.out_dir, ".progress", split)

  def _start_split(self, split: str, entries: list[VideoEntry], queries: list[Query]) -> str:
    """Returns the split's progress folder, cleared when the build arguments changed."""
    ident = json.dumps({"args": self.build_args, "split": split, "format": records.PREPARED_FORMAT_VERSION,
                        "videos": [e.vid_name for e in entries], "queries": [q.desc_id for q in queries],
                        "vocab": self.vocab_sha256, "videos_per_shard": self.videos_per_shard},
                       sort_keys=True)
    build_id = hashlib.sha256(ident.encode()).hexdigest()
    progress = self._progress_dir(split)
    id_file = os.path.join(progress, "build_id")
    if os.path.exists(id_file) and open(id_file).read() == build_id:
      return progress
    # Different inputs: nothing of the old split may survive.
    shutil.rmtree(progress, ignore_errors=True)
    for name, d in self.dirs.items():
      for f in os.listdir(d):
        if f.startswith(f"{name}-{split}.tfrecord-"):
          os.remove(os.path.join(d, f))
    os.makedirs(progress, exist_ok=True)
    files.atomic_write(id_file, build_id)
    return progress

  def _write_shard(self, dataset: str, split: str, index: int, count: int, serialized: list[bytes]) -> None:
    import tensorflow as tf  # Deferred: only the writer needs TF.
    path = os.path.join(self.dirs[dataset], _shard_name(dataset, split, index, count))
    def write(tmp: str) -> None:
      with tf.io.TFRecordWriter(tmp) as w:
        for s in serialized:
          w.write(s)

    files.atomic_write_with(path, write)

  def write_split(self, split: str, entries: list[VideoEntry], queries: list[Query],
                  load_video: Callable[[VideoEntry, RepairLog], LoadedVideo], log: RepairLog,
                  *, has_ground_truth: bool) -> dict[str, Any]:
    """Writes one split; finished shards of an interrupted earlier run are kept.

    Args:
      entries: the split's videos, in the order they are stored.
      queries: every query of the split (with token_ids).
      load_video: reads and checks one video's features (counts repairs in the log).
      log: repairs and drops already counted while reading annotations.
    """
    from tqdm import tqdm
    progress = self._start_split(split, entries, queries)
    n_shards = max(1, -(-len(entries) // self.videos_per_shard))
    frames_total, reused = 0, 0
    shard_log = RepairLog()
    bar = tqdm(total=len(entries), desc=f"{self.source} {split} videos", unit="video",
               file=sys.stderr, disable=None)
    for s in range(n_shards):
      done_file = os.path.join(progress, f"videos-{s:05d}.json")
      chunk = entries[s * self.videos_per_shard:(s + 1) * self.videos_per_shard]
      if os.path.exists(done_file):
        done = json.load(open(done_file))
        frames_total += done["frames"]
        shard_log.merge(done["log"])
        bar.update(len(chunk))
        reused += 1
        continue
      this_log = RepairLog()
      serialized, frames = [], 0
      for entry in chunk:
        video, sub, sub_mask, frame_seconds = load_video(entry, this_log)
        frames += video.shape[0]
        ex = records.video_example(entry, frame_seconds, video, sub, sub_mask)
        serialized.append(self.video_spec.serialize_example(ex))
        bar.update(1)
      self._write_shard("videos", split, s, n_shards, serialized)
      files.atomic_write(done_file, json.dumps({"count": len(chunk), "frames": frames, "log": this_log.to_dict()}))
      frames_total += frames
      shard_log.merge(this_log.to_dict())
    bar.close()

    index_of = {e.vid_name: e.video_index for e in entries}
    nq_shards = max(1, -(-len(queries) // self.queries_per_shard))
    for s in range(nq_shards):
      chunk = queries[s * self.queries_per_shard:(s + 1) * self.queries_per_shard]
      self._write_shard("queries", split, s, nq_shards, [
          self.query_spec.serialize_example(records.query_example(q, index_of.get(q.vid_name, -1)))
          for q in chunk])

    log.merge(shard_log.to_dict())
    summary = {
        "num_videos": len(entries),
        "num_queries": len(queries),
        "num_frames": frames_total,
        "has_ground_truth": has_ground_truth,
        "video_shards_reused": reused,
        "video_shard_lengths": [len(entries[i * self.videos_per_shard:(i + 1) * self.videos_per_shard])
                                for i in range(n_shards)],
        "query_shard_lengths": [len(queries[i * self.queries_per_shard:(i + 1) * self.queries_per_shard])
                                for i in range(nq_shards)],
        "queries_per_video": [len(e.queries) for e in entries],
        "video_names": [e.vid_name for e in entries],  # in stored order: row i has video_index i
        "repaired": dict(log.repaired),
        "dropped": dict(log.dropped),
        "examples": dict(log.examples),
    }
    self.splits[split] = summary
    return summary

  # -- the whole dataset -----------------------------------------------------

  def finalize(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes TFDS metadata for every split, then `prepared.json` (atomically, last)."""
    import tensorflow_datasets as tfds
    manifest_path = os.path.join(self.out_dir, "prepared.json")
    manifest = {
        "format_version": records.PREPARED_FORMAT_VERSION,
        "source": self.source,
        "video_dim": self.video_dim,
        "subtitle_dim": self.subtitle_dim,
        "text_checkpoint": self.checkpoint,
        "vocab_sha256": self.vocab_sha256,
        "build_args": self.build_args,
        "splits": {},
        **pretrained.token_space(self.checkpoint),
    }
    old = self.previous
    if old and all(old.get(k) == manifest[k] for k in ("source", "video_dim", "subtitle_dim", "vocab_sha256")):
      # Keep splits prepared by an earlier run with compatible settings whose shards are still there.
      kept = {k: v for k, v in old["splits"].items()
              if k not in self.splits and os.path.exists(os.path.join(self.dirs["videos"], _shard_name(
                  "videos", k, 0, len(v["video_shard_lengths"]))))}
      manifest["splits"].update(kept)
    manifest["splits"].update(self.splits)
    manifest.update(extra or {})
    for dataset, spec, key in (("videos", self.video_spec, "video_shard_lengths"),
                               ("queries", self.query_spec, "query_shard_lengths")):
      infos = [tfds.core.SplitInfo(name=split, shard_lengths=info[key], num_bytes=0)
               for split, info in manifest["splits"].items()]
      tfds.folder_dataset.write_metadata(
          data_dir=self.dirs[dataset], features=spec, split_infos=infos,
          filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", check_data=False,
          description=f"hammer_jax prepared {self.source} {dataset}")
    files.atomic_write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
  """Human-readable end-of-run summary: counts and repairs/drops with reasons."""
  lines = [f"Prepared {manifest['source']} data: video dim {manifest['video_dim']}, "
           f"subtitle dim {manifest['subtitle_dim']}, vocabulary {manifest['vocab_sha256'][:12]}"]
  lines.append(f"{'split':<14}{'videos':>9}{'queries':>10}{'frames':>11}")
  for split, info in manifest["splits"].items():
    reused = info.get("video_shards_reused", 0)
    lines.append(f"{split:<14}{info['num_videos']:>9}{info['num_queries']:>10}{info['num_frames']:>11}"
                 + (f"   ({reused} of {len(info['video_shard_lengths'])} shards kept from an earlier run)"
                    if reused else ""))
    for kind in ("repaired", "dropped"):
      for reason, n in sorted(info.get(kind, {}).items()):
        ex = info.get("examples", {}).get(reason, [])
        lines.append(f"  {kind} {n:>6}  {reason}" + (f"  (e.g. {ex[0]})" if ex else ""))
  return "\n".join(lines)
