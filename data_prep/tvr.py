r"""Prepares TVR (official release layout) as TFRecord shards for hammer_jax.

  python -m data_prep.tvr --annotation_dir=DIR --video_feature=video.h5 \
      --subtitle_feature=sub.h5 --video2dur_idx=DIR/tvr_video2dur_idx.json \
      --out_dir=data/tvr_prepared

The annotation folder holds `tvr_{train,val,test_public}_release.jsonl` (missing
files are skipped). Visual features are either the concatenated ResNet-152+I3D
h5 (`--video_feature=a.h5`) or the two separate files
(`--video_feature=resnet.h5,i3d.h5`, optionally `--l2_normalize`); one row per
1.5 s. The test split's corpus is the `test_public` entry of
`tvr_video2dur_idx.json`, since its queries carry no video names.
Safe to re-run: finished shards are kept (see `prepared_writer`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence


from data_prep import annotations, cli, features, records
from data_prep.prepared_writer import PreparedWriter
from data_prep.records import DataError, Query, RepairLog, VideoEntry
from hammer_jax.model import pretrained

SPLIT_FILES = {"train": "tvr_train_release.jsonl", "val": "tvr_val_release.jsonl",
               "test_public": "tvr_test_public_release.jsonl"}


def _read_video2dur(path: str | None) -> dict[str, dict[str, list[float]]]:
  """`{split: {vid_name: [duration seconds, official index]}}`, every entry checked (one line per problem)."""
  if not path:
    return {}
  text = "".join(line for _, line in annotations.read_lines(path))
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise annotations.json_error(path, text, e) from None
  if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
    raise DataError(path, "<top level>", "<json>", 'expected {"<split>": {"<vid_name>": [duration, index]}}')
  for split, videos in data.items():
    for name, entry in videos.items():
      where = f"{split} video {name}"
      if not isinstance(entry, list) or len(entry) != 2:
        raise DataError(path, where, "<entry>", f"expected [duration, index], got {entry!r}")
      duration = annotations.number(entry[0], path, where, "duration")
      if duration <= 0:
        raise DataError(path, where, "duration", f"must be positive, got {duration}")
      index = entry[1]
      if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= records.INT64_MAX:
        raise DataError(path, where, "index", f"expected a non-negative int64 integer, got {index!r}")
  return data


def _split_entries(split: str, queries: list[Query], video2dur: dict[str, Any], path: str,
                   video2dur_path: str) -> list[VideoEntry]:
  """The split's videos in official-index order, each with its queries (`path`: the split's annotation file)."""
  official = video2dur.get(split) or (video2dur.get("test") if split == "test_public" else None) or {}
  if split == "test_public":
    if not official:
      raise DataError(video2dur_path or path, "<file>", "video2dur_idx",
                      "the test_public split needs --video2dur_idx with a 'test_public' entry (its corpus)")
    names = sorted(official, key=lambda n: official[n][1])
    return [VideoEntry(n, i, float(official[n][0]), []) for i, n in enumerate(names)]
  by_video: dict[str, list[Query]] = {}
  for q in queries:
    by_video.setdefault(q.vid_name, []).append(q)
  for name, qs in by_video.items():
    _check_duration(name, qs, official, path, video2dur_path)
  names = sorted(by_video, key=lambda n: (official[n][1], n) if n in official else (float("inf"), n))
  return [VideoEntry(n, i, by_video[n][0].duration, by_video[n]) for i, n in enumerate(names)]


DURATION_TOLERANCE = 0.05  # seconds: the release writes durations with 2 decimals


def _check_duration(name: str, queries: list[Query], official: dict[str, Any], path: str,
                    video2dur_path: str) -> None:
  """Every query of a video states the same duration, and the video2dur_idx file's if it has the video.

  The error names the annotation file and its record (the query that disagrees);
  the other side of the conflict (another line, or the video2dur_idx entry) is in
  the message.
  """
  first = queries[0]
  for q in queries[1:]:
    if abs(q.duration - first.duration) > DURATION_TOLERANCE:
      raise DataError(path, q.where, "duration", f"{q.duration} s for video {name}, but {first.where} says "
                      f"{first.duration} s")
  if name in official and abs(float(official[name][0]) - first.duration) > DURATION_TOLERANCE:
    raise DataError(path, first.where, "duration", f"{first.duration} s for video {name}, but {video2dur_path} "
                    f"(video2dur_idx) says {official[name][0]} s")


ROWS_TOLERANCE = 2  # feature rows: more than this off ceil(duration / clip_seconds) is another video's features


def _check_rows(entries: list[VideoEntry], visual: features.VisualFeatures, clip_seconds: float,
                log: RepairLog) -> None:
  """Feature rows against the duration: rows x clip_seconds must cover the video (within ROWS_TOLERANCE)."""
  for e in entries:
    rows, expected = visual.rows(e.vid_name), math.ceil(round(e.duration / clip_seconds, 6))
    if abs(rows - expected) > ROWS_TOLERANCE:
      raise DataError(visual.files[0].path, f"video {e.vid_name}", "video",
                      f"{rows} rows of {clip_seconds} s cover {rows * clip_seconds:.1f} s but the video lasts "
                      f"{e.duration} s (expected {expected} rows; other --clip_seconds or another video's features?)")
    if rows != expected:
      log.repair(f"feature rows differ from ceil(duration / {clip_seconds} s) by 1-{ROWS_TOLERANCE} (kept)",
                 e.vid_name)


def prepare_tvr(out_dir: str, *, annotation_dir: str = "", split_files: dict[str, str] | None = None,
                video_feature: Sequence[str], subtitle_feature: str = "", video2dur_idx: str = "",
                l2_normalize: bool = False, text_checkpoint: str = pretrained.DEFAULT_CHECKPOINT,
                max_query_len: int = 64, clip_seconds: float = 1.5, videos_per_shard: int = 256,
                missing_videos: str = "error", overwrite: bool = False) -> dict[str, Any]:
  """Converts a TVR-layout corpus; returns the `prepared.json` manifest.

  Everything that can be checked without reading feature values (annotations,
  durations, feature names, shapes, dtypes, rows against durations) is checked
  for every split before anything is written; the dataset then replaces
  `out_dir` whole (prepared_writer.py).
  """
  if missing_videos not in ("error", "drop"):
    raise ValueError(f"missing_videos must be 'error' or 'drop', got {missing_videos!r}")
  records.require_at_least("videos_per_shard", videos_per_shard, 1, "videos per TFRecord shard")
  records.require_at_least("max_query_len", max_query_len, 3, "[CLS], at least one token, [SEP]")
  records.require_at_least("clip_seconds", clip_seconds, 1e-3, "seconds one feature row covers")
  files = annotations.annotation_files(annotation_dir, split_files, SPLIT_FILES)
  ckpt = pretrained.resolve_checkpoint_dir(text_checkpoint, need_weights=False)
  tokenizer = pretrained.load_tokenizer(ckpt)
  video2dur = _read_video2dur(video2dur_idx)
  visual = features.VisualFeatures(list(video_feature), normalize=l2_normalize)
  subs = features.SubtitleFeatures(subtitle_feature) if subtitle_feature else None

  def convert() -> dict[str, Any]:
    # Parse and check every annotation file before writing anything.
    parsed: dict[str, tuple[list[VideoEntry], list[Query], RepairLog]] = {}
    seen_ids: dict[int, str] = {}
    for split, path in files.items():
      log = RepairLog()
      queries = annotations.read_tvr_jsonl(path, log, with_ground_truth=split != "test_public")
      for q in queries:
        if q.desc_id in seen_ids:
          raise DataError(path, f"desc_id {q.desc_id}", "desc_id", f"duplicate desc_id, also in {seen_ids[q.desc_id]}")
        seen_ids[q.desc_id] = path
      queries = annotations.tokenize_queries(queries, tokenizer, max_query_len, log, path)
      entries = _split_entries(split, queries, video2dur, path, video2dur_idx)
      if split == "train":
        entries = records.shuffled_for_training(entries)
      if missing_videos == "drop":
        kept = [e for e in entries if all(e.vid_name in f for f in visual.files)]
        for e in entries:
          if e not in kept:
            log.drop("video missing from the feature file", e.vid_name)
            for q in e.queries:
              log.drop("query of a dropped video", str(q.desc_id))
        entries = [VideoEntry(e.vid_name, i, e.duration, e.queries) for i, e in enumerate(kept)]
        queries = [q for e in entries for q in e.queries] if split != "test_public" else queries
      annotations.require_queries(split, path, queries, entries, log)
      parsed[split] = (entries, queries, log)
    annotations.check_train_videos_not_evaluated(
        {split: (video2dur_idx if split == "test_public" else files[split], [e.vid_name for e in entries])
         for split, (entries, _, _) in parsed.items()})

    all_names = [e.vid_name for entries, _, _ in parsed.values() for e in entries]
    video_dim = visual.check(all_names)
    subtitle_dim = subs.check(all_names) if subs else 0
    for entries, _, log in parsed.values():
      _check_rows(entries, visual, clip_seconds, log)

    def load_video(entry: VideoEntry, log: RepairLog):
      video, truncated = visual.read(entry.vid_name)
      if truncated:
        log.repair("visual files differ in rows: common prefix kept", entry.vid_name)
      sub = sub_mask = None
      if subs:
        sub, sub_mask, reason = subs.read(entry.vid_name, video.shape[0], subtitle_dim)
        if reason:
          log.repair(reason, entry.vid_name)
      return video, sub, sub_mask, clip_seconds

    with PreparedWriter(
        out_dir, source="tvr", video_dim=video_dim, subtitle_dim=subtitle_dim,
        checkpoint=pretrained.portable_name(text_checkpoint, ckpt),
        vocab_sha256=pretrained.vocab_fingerprint(ckpt), videos_per_shard=videos_per_shard, splits=list(parsed),
        overwrite=overwrite,
        build_args={"files": files, "video_feature": list(video_feature), "subtitle_feature": subtitle_feature,
                    "l2_normalize": l2_normalize, "max_query_len": max_query_len, "clip_seconds": clip_seconds,
                    "missing_videos": missing_videos, "video2dur_idx": video2dur_idx,
                    "inputs": records.input_fingerprint([*files.values(), *video_feature, subtitle_feature,
                                                         video2dur_idx])}) as writer:
      return _write(writer, parsed, load_video, video2dur, clip_seconds, max_query_len)

  try:
    return convert()
  finally:
    visual.close()
    if subs:
      subs.close()


def _write(writer: PreparedWriter, parsed, load_video, video2dur, clip_seconds: float,
           max_query_len: int) -> dict[str, Any]:
  """Writes every split (nothing when an identical dataset is already there); returns the manifest."""
  if writer.up_to_date:
    return dict(writer.up_to_date, up_to_date=True)
  video2idx = {}
  for split, (entries, queries, log) in parsed.items():
    writer.write_split(split, entries, queries, load_video, log, has_ground_truth=split != "test_public")
    official = video2dur.get(split) or (video2dur.get("test") if split == "test_public" else None) or {}
    video2idx[split] = {e.vid_name: int(official[e.vid_name][1]) if e.vid_name in official else e.video_index
                        for e in entries}
  return writer.finalize({"video2idx": video2idx, "frame_seconds": clip_seconds,
                          "max_query_len_prepared": max_query_len})


SPLIT_FLAGS = {"train": ("train_file", "Train annotation jsonl"), "val": ("val_file", "Val annotation jsonl"),
               "test_public": ("test_public_file", "Test-public annotation jsonl")}


def _prepare(f) -> dict:
  return prepare_tvr(**cli.common_args(f, SPLIT_FLAGS), video_feature=f.video_feature,
                     subtitle_feature=f.subtitle_feature, video2dur_idx=f.video2dur_idx, l2_normalize=f.l2_normalize,
                     clip_seconds=f.clip_seconds)


def _define_flags():
  from absl import flags
  cli.define_common_flags("Folder with tvr_{train,val,test_public}_release.jsonl.", SPLIT_FLAGS)
  flags.DEFINE_list("video_feature", None, "Visual feature h5 file(s); several are concatenated.", required=True)
  flags.DEFINE_string("subtitle_feature", "", "Subtitle feature h5 ('' = no subtitle stream).")
  flags.DEFINE_string("video2dur_idx", "", "tvr_video2dur_idx.json (official indices; test corpus).")
  flags.DEFINE_bool("l2_normalize", False, "L2-normalise each visual file's rows before concatenating.")
  flags.DEFINE_float("clip_seconds", 1.5, "Seconds covered by one feature row.")


if __name__ == "__main__":
  cli.main(_define_flags, _prepare)
