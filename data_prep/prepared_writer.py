"""Writes prepared data: TFRecord shards + TFDS metadata + `prepared.json`.

Why not a `tfds.core.GeneratorBasedBuilder`: TFDS builders restart a split from
scratch after an interruption (TVR train is ~17 GB of features) and take one
feature spec per dataset, while we need two linked record sets (videos with
their features once, and small query records) and per-shard resumption. So the
shards are written here, each atomically (temp file + rename, then a progress
record), and `tfds.folder_dataset.write_metadata` makes both folders ordinary
TFDS datasets that `tfds.builder_from_directory` and tf.data read.

A prepared dataset is replaced whole or not at all, locally and in a bucket
(`gs://`, through hammer_jax.files): its records live in a folder named after
the build (`out_dir/data-<build id>/`), and `out_dir/prepared.json` names the
folder readers use. A run writes its own folder, then replaces prepared.json
(one atomic write) and only then deletes the previous folder. So a failed or
interrupted re-run leaves the previous dataset byte-identical and loadable; the
new folder keeps its finished shards, and a re-run with the same arguments
continues where it stopped; a re-run of a complete, up-to-date dataset does
nothing. A run that prepares other splits than the folder holds is refused (it
would otherwise drop or mix splits) unless `overwrite` says to replace them.

One run writes into an `out_dir` at a time (data_prep/lock.py: a lock locally, a
marker and a notice on a bucket), held from reading the current prepared.json
to publishing. Independently of the lock, nothing a run deletes (stale shards,
progress records, earlier build folders) is ever inside the folder that
prepared.json names at that moment, and a build is published only when every
shard its manifest lists is present.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Any, Callable

import numpy as np

from data_prep import lock, records
from hammer_jax import files
from data_prep.records import DataError, Query, RepairLog, VideoEntry
from hammer_jax.model import pretrained

# (video [rows, dim], subtitle [rows, sdim] | None, subtitle_mask [rows] | None, frame_seconds)
LoadedVideo = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]


def _shard_name(dataset: str, split: str, index: int, count: int) -> str:
  return f"{dataset}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def _refuse(out_dir: str, problem: str):
  return DataError(out_dir, "<folder>", "out_dir", problem)


DATA_FOLDER_PREFIX = "data-"


def published_folder(out_dir: str) -> str | None:
  """The data folder name that `out_dir/prepared.json` names now (None: none, or unreadable)."""
  manifest = existing_manifest(out_dir)
  folder = manifest.get("data_folder") if isinstance(manifest, dict) else None
  return folder if isinstance(folder, str) else None


def existing_manifest(out_dir: str) -> dict[str, Any] | None:
  """The manifest of a complete prepared dataset at `out_dir`, or None."""
  path = os.path.join(out_dir, "prepared.json")
  if not files.isfile(path):
    return None
  try:
    return json.loads(files.read_text(path))
  except (OSError, ValueError):
    return None


class PreparedWriter:
  """Writes the `videos` and `queries` datasets of one source, then puts them at `out_dir` whole.

  After construction, `up_to_date` is the manifest of an identical complete
  dataset already at `out_dir` (nothing to write), else None. A corpus without
  queries (data_prep.corpus) has no tokenizer: `checkpoint` and `vocab_sha256`
  are None, and so are they in its manifest.
  """

  def __init__(self, out_dir: str, *, source: str, video_dim: int, subtitle_dim: int,
               checkpoint: str | None, vocab_sha256: str | None, build_args: dict[str, Any], splits: list[str],
               videos_per_shard: int = 256, queries_per_shard: int = 50_000, overwrite: bool = False):
    self.out_dir = files.absolute(out_dir)
    self.source, self.video_dim, self.subtitle_dim = source, video_dim, subtitle_dim
    self.checkpoint, self.vocab_sha256 = checkpoint, vocab_sha256
    self.build_args = build_args
    self.videos_per_shard, self.queries_per_shard = videos_per_shard, queries_per_shard
    self.video_spec = records.video_features(video_dim, subtitle_dim)
    self.query_spec = records.query_features()
    self.build_id = hashlib.sha256(json.dumps(
        {"source": source, "dims": [video_dim, subtitle_dim], "vocab": vocab_sha256, "args": build_args,
         "splits": sorted(splits), "videos_per_shard": videos_per_shard, "format": records.PREPARED_FORMAT_VERSION},
        sort_keys=True).encode()).hexdigest()
    self.data_folder = DATA_FOLDER_PREFIX + self.build_id[:16]
    self.root = os.path.join(self.out_dir, self.data_folder)
    _check_out_dir(self.out_dir)
    self._held = contextlib.ExitStack()
    self._held.enter_context(lock.out_dir_lock(self.out_dir))  # Released by close() / the with block.
    try:
      self._open(splits, overwrite)
    except BaseException:
      self.close()
      raise

  def _open(self, splits: list[str], overwrite: bool) -> None:
    existing = existing_manifest(self.out_dir)
    self.up_to_date = existing if existing and existing.get("build_id") == self.build_id else None
    if self.up_to_date:
      return
    if existing and sorted(existing["splits"]) != sorted(splits) and not overwrite:
      raise _refuse(self.out_dir, f"holds a prepared {existing['source']} corpus with splits "
                    f"{', '.join(sorted(existing['splits']))}; this run prepares {', '.join(sorted(splits))}: give "
                    "every split again, choose another --out_dir, or --overwrite to replace it")
    foreign = [n for n in files.listdir(self.out_dir) if not n.startswith(DATA_FOLDER_PREFIX) and n != lock.LOCK_NAME]
    if existing is None and foreign and not overwrite:
      raise _refuse(self.out_dir, "exists and is not a prepared dataset (no prepared.json); choose another "
                    "--out_dir, or --overwrite to replace it")
    self.dirs = {name: os.path.join(self.root, name, records.DATASET_VERSION) for name in ("videos", "queries")}
    for d in self.dirs.values():
      files.makedirs(d)
    self.splits: dict[str, dict[str, Any]] = {}

  def close(self) -> None:
    """Releases the out_dir lock (idempotent)."""
    self._held.close()

  def __enter__(self) -> "PreparedWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _check_unpublished(self, path: str) -> None:
    """Refuses to change `path` when it lies in the folder prepared.json names now: only a run writing
    into the same out_dir at the same time (same inputs, same build folder) can have published it."""
    published = published_folder(self.out_dir)
    if published and (path + os.sep).startswith(os.path.join(self.out_dir, published) + os.sep):
      raise _refuse(self.out_dir, f"{published} was published by another run while this one was writing to it: "
                    "run one preparation per --out_dir at a time; the published dataset is intact")

  def _delete(self, path: str, *, folder: bool) -> None:
    """Deletes a file or folder of ours; never one in the published folder (clean-up never touches published data)."""
    self._check_unpublished(path)
    (files.rmtree if folder else files.remove)(path)

  def write_file(self, name: str, text: str) -> str:
    """Writes `text` as `name` in this build's folder, published with it; returns its path relative to out_dir."""
    path = os.path.join(self.root, name)
    self._check_unpublished(path)
    files.atomic_write(path, text)
    return f"{self.data_folder}/{name}"

  # -- one split -------------------------------------------------------------

  def _progress_dir(self, split: str) -> str:
    return os.path.join(self.root, ".progress", split)

  def _start_split(self, split: str, entries: list[VideoEntry], queries: list[Query]) -> str:
    """Returns the split's progress folder, cleared when the build arguments changed."""
    ident = json.dumps({"args": self.build_args, "split": split, "format": records.PREPARED_FORMAT_VERSION,
                        "videos": [e.vid_name for e in entries], "queries": [q.desc_id for q in queries],
                        "vocab": self.vocab_sha256, "videos_per_shard": self.videos_per_shard},
                       sort_keys=True)
    build_id = hashlib.sha256(ident.encode()).hexdigest()
    progress = self._progress_dir(split)
    id_file = os.path.join(progress, "build_id")
    if files.exists(id_file) and files.read_text(id_file) == build_id:
      return progress
    # Different inputs: nothing of the old split may survive.
    self._delete(progress, folder=True)
    for name, d in self.dirs.items():
      for f in files.listdir(d):
        if f.startswith(f"{name}-{split}.tfrecord-"):
          self._delete(os.path.join(d, f), folder=False)
    files.makedirs(progress)
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
    rows, seconds = [], []  # Per video, in stored order: what training needs to know which moments fit.
    shard_log = RepairLog()
    bar = tqdm(total=len(entries), desc=f"{self.source} {split} videos", unit="video",
               file=sys.stderr, disable=None)
    for s in range(n_shards):
      done_file = os.path.join(progress, f"videos-{s:05d}.json")
      chunk = entries[s * self.videos_per_shard:(s + 1) * self.videos_per_shard]
      if files.exists(done_file):
        done = json.loads(files.read_text(done_file))
        frames_total += done["frames"]
        rows += done["rows"]
        seconds += done["frame_seconds"]
        shard_log.merge(done["log"])
        bar.update(len(chunk))
        reused += 1
        continue
      this_log = RepairLog()
      serialized, frames, chunk_rows, chunk_seconds = [], 0, [], []
      for entry in chunk:
        video, sub, sub_mask, frame_seconds = load_video(entry, this_log)
        records.note_zero_rows(video, entry.vid_name, this_log)
        frames += video.shape[0]
        chunk_rows.append(int(video.shape[0]))
        chunk_seconds.append(float(frame_seconds))
        ex = records.video_example(entry, frame_seconds, video, sub, sub_mask)
        serialized.append(self.video_spec.serialize_example(ex))
        bar.update(1)
      self._check_unpublished(self.root)  # Reading the videos took a while: is the folder still ours to write?
      self._write_shard("videos", split, s, n_shards, serialized)
      files.atomic_write(done_file, json.dumps({"count": len(chunk), "frames": frames, "rows": chunk_rows,
                                                "frame_seconds": chunk_seconds, "log": this_log.to_dict()}))
      frames_total += frames
      rows += chunk_rows
      seconds += chunk_seconds
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
        "video_rows": rows,
        "video_frame_seconds": seconds,
        **{kind: dict(getattr(log, kind)) for kind in RepairLog.KINDS},
        "examples": dict(log.examples),
    }
    self.splits[split] = summary
    return summary

  # -- the whole dataset -----------------------------------------------------

  def finalize(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes TFDS metadata and `prepared.json` (last) into the staging folder, then swaps it in."""
    import tensorflow_datasets as tfds
    manifest = {
        "format_version": records.PREPARED_FORMAT_VERSION,
        "build_id": self.build_id,
        "data_folder": self.data_folder,
        "source": self.source,
        "video_dim": self.video_dim,
        "subtitle_dim": self.subtitle_dim,
        "text_checkpoint": self.checkpoint,
        "vocab_sha256": self.vocab_sha256,
        "build_args": self.build_args,
        "splits": dict(self.splits),
        **(pretrained.token_space(self.checkpoint) if self.checkpoint else {}),
    }
    manifest.update(extra or {})
    for dataset, spec, key in (("videos", self.video_spec, "video_shard_lengths"),
                               ("queries", self.query_spec, "query_shard_lengths")):
      infos = [tfds.core.SplitInfo(name=split, shard_lengths=info[key], num_bytes=0)
               for split, info in manifest["splits"].items()]
      tfds.folder_dataset.write_metadata(
          data_dir=files.native(self.dirs[dataset]), features=spec, split_infos=infos,
          filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", check_data=False,
          description=f"hammer_jax prepared {self.source} {dataset}")
    self._check_complete(manifest["splits"])
    self._delete(os.path.join(self.root, ".progress"), folder=True)
    # The switch: from here on readers use the new folder; then nothing else of ours is needed.
    files.atomic_write(os.path.join(self.out_dir, "prepared.json"), json.dumps(manifest, indent=1, sort_keys=True))
    for name in files.listdir(self.out_dir):
      if name.startswith(DATA_FOLDER_PREFIX) and name != self.data_folder or name in ("videos", "queries",
                                                                                      ".progress"):
        # Earlier builds (and the pre-data-folder layout).
        self._delete(os.path.join(self.out_dir, name), folder=True)
    return manifest

  def _check_complete(self, splits: dict[str, dict[str, Any]]) -> None:
    """Every shard the manifest lists is in the build folder, before it is published."""
    for dataset, key in (("videos", "video_shard_lengths"), ("queries", "query_shard_lengths")):
      present = set(files.listdir(self.dirs[dataset]))
      missing = [name for split, info in splits.items() for i in range(len(info[key]))
                 if (name := _shard_name(dataset, split, i, len(info[key]))) not in present]
      if missing:
        raise _refuse(self.out_dir, f"{len(missing)} shards of this build disappeared while it ran (e.g. "
                      f"{self.data_folder}/{dataset}/{missing[0]}; removed by another run?): nothing was "
                      "published; run again, one preparation per --out_dir at a time")


def _check_out_dir(out_dir: str) -> None:
  """One line when a local `out_dir` cannot be a folder of ours (a file, an uncreatable or read-only place)."""
  if files.has_scheme(out_dir):
    return  # A bucket: no folders to create, and permissions show at the first write.
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise _refuse(out_dir, "is a file, not a folder")
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise _refuse(out_dir, f"cannot create its folder {parent} ({e.strerror or e})") from None
  if not os.access(parent, os.W_OK):
    raise _refuse(out_dir, f"its folder {parent} is not writable")


def format_summary(manifest: dict[str, Any]) -> str:
  """Human-readable end-of-run summary: counts and repairs/drops with reasons."""
  vocab = manifest.get("vocab_sha256")
  lines = [f"Prepared {manifest['source']} data: video dim {manifest['video_dim']}, "
           f"subtitle dim {manifest['subtitle_dim']}, "
           + (f"vocabulary {vocab[:12]}" if vocab else "no queries (no vocabulary)")
           + (" (already complete for these inputs and arguments: nothing written)" if manifest.get("up_to_date")
              else "")]
  if manifest.get("subtitle_stream"):
    lines.append(f"subtitle stream: {manifest['subtitle_stream']}")
  if manifest.get("subtitle_lines"):
    lines.append(f"subtitle lines: {manifest['subtitle_lines']}")
  lines.append(f"{'split':<14}{'videos':>9}{'queries':>10}{'frames':>11}")
  for split, info in manifest["splits"].items():
    reused = info.get("video_shards_reused", 0)
    lines.append(f"{split:<14}{info['num_videos']:>9}{info['num_queries']:>10}{info['num_frames']:>11}"
                 + (f"   ({reused} of {len(info['video_shard_lengths'])} shards kept from an earlier run)"
                    if reused else ""))
    for kind in RepairLog.KINDS:
      for reason, n in sorted(info.get(kind, {}).items()):
        ex = info.get("examples", {}).get(reason, [])
        lines.append(f"  {kind} {n:>6}  {reason}" + (f"  (e.g. {ex[0]})" if ex else ""))
  return "\n".join(lines)
