r"""Prepares a corpus without queries from feature files: your own videos, to search with a trained model.

  python -m data_prep.corpus --features=PATH --out_dir=DIR [--subtitle_features=PATH]
      [--subtitle_dim=N] [--subtitles=PATH] [--seconds_per_row=1.5] [--durations=FILE]
      [--split=corpus] [--videos_per_shard=256] [--max_frames=0] [--l2_normalize] [--overwrite]

`--features` is what feature extractors write: a folder of one `<video_name>.npy`
(or `.npz`: its one array, or the one named `features`) per video, or one h5
file keyed by video name (TVR's `video_feature.h5` layout); rows are time steps,
columns the feature width. A video lasts `--durations`' seconds (a JSON
`{name: seconds}`, TVR's `tvr_video2dur_idx.json`, or CSV/TSV lines `name,seconds`)
or, by default, rows x `--seconds_per_row`; rows that do not fit the duration
(TVR's rule: more than 2 rows off `ceil(duration / seconds_per_row)`) are refused.

The subtitle stream is read from `--subtitle_features` (same layouts; TVR's
`sub_feature.h5` with its `<name>-mask` keys) as data_prep.tvr reads it. Without
it, every video gets zero subtitle rows with mask 0, `--subtitle_dim` wide (the
model's subtitle width), as the paper and TVR do for videos without subtitles;
`--subtitle_dim=0` (the default) writes no subtitle stream, for models trained
without one. `--subtitles` (a folder of `<video_name>.srt|.vtt`, or TVR's
`tvqa_preprocessed_subtitles.jsonl`) adds the subtitle *lines* for display:
written as `subtitles.jsonl` (TVR's format) in the prepared folder, named by the
manifest's `subtitle_lines`.

The prepared layout is the other preparations' (docs/data_format.md) with one
split (`--split`, default `corpus`) and no queries, written by PreparedWriter
(atomic publication, lock, resume); the manifest has no vocabulary, so any
model's vocabulary fits and only the feature widths are checked where a model
meets the corpus (`python -m hammer_jax.index|search --prepared_dir=DIR`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any

import numpy as np

from data_prep import annotations, cli, features, records, subtitle_lines, tvr
from data_prep.prepared_writer import PreparedWriter
from data_prep.records import ArgumentError, DataError, RepairLog, VideoEntry

SUBTITLE_LINES_FILE = "subtitles.jsonl"


def read_durations(path: str) -> dict[str, float]:
  """{video name: seconds} of a JSON `{name: seconds}`, TVR's `{split: {name: [seconds, index]}}`, or CSV/TSV."""
  if path.endswith(".json"):
    text = "".join(line for _, line in annotations.read_lines(path))
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise annotations.json_error(path, text, e) from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
      return {name: float(entry[0]) for videos in tvr._read_video2dur(path).values()  # pylint: disable=protected-access
              for name, entry in videos.items()}
    if not isinstance(data, dict):
      raise DataError(path, "<top level>", "<json>", 'expected {"<video name>": seconds}')
    out = {name: annotations.number(v, path, f"video {name}", "duration") for name, v in data.items()}
  else:
    out, first, header_allowed = {}, {}, True
    for n, line in annotations.read_lines(path):
      if not line.strip() or line.lstrip().startswith("#"):
        continue
      row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t" if "\t" in line else ","))
      if len(row) != 2:
        raise DataError(path, f"line {n}", "<columns>", f"expected 'name,seconds', got {len(row)} columns")
      name, value = row[0].strip(), row[1].strip()
      where = f"line {n} (video {name})"
      try:
        seconds = float(value)
      except ValueError:
        if header_allowed:  # A header line ("video,duration").
          header_allowed = False
          continue
        raise DataError(path, where, "duration", f"expected seconds, got {value!r}") from None
      header_allowed = False
      if not name:
        raise DataError(path, f"line {n}", "vid_name", "empty video name")
      if name in first:
        raise DataError(path, where, "vid_name", f"duplicate video, first on line {first[name]}")
      first[name] = n
      out[name] = annotations.number(seconds, path, where, "duration")
  for name, seconds in out.items():
    if seconds <= 0:
      raise DataError(path, f"video {name}", "duration", f"must be positive, got {seconds}")
  return out


def _check_rows(source: features.FeatureFile, name: str, rows: int, duration: float, seconds_per_row: float,
                durations_path: str, log: RepairLog) -> None:
  """data_prep.tvr's rule: rows x seconds_per_row cover the duration, within tvr.ROWS_TOLERANCE rows."""
  expected = math.ceil(round(duration / seconds_per_row, 6))
  if abs(rows - expected) > tvr.ROWS_TOLERANCE:
    raise DataError(source.path, f"video {name}", source.field,
                    f"{rows} rows of {seconds_per_row} s cover {rows * seconds_per_row:.1f} s but {durations_path} "
                    f"says the video lasts {duration} s (expected {expected} rows; other --seconds_per_row, or "
                    "another video's features?)")
  if rows != expected:
    log.repair(f"feature rows differ from ceil(duration / {seconds_per_row} s) by 1-{tvr.ROWS_TOLERANCE} (kept)", name)


def prepare_corpus(out_dir: str, *, features_path: str, subtitle_features: str = "", subtitle_dim: int = 0,
                   subtitles: str = "", seconds_per_row: float = 1.5, durations: str = "", split: str = "corpus",
                   videos_per_shard: int = 256, max_frames: int = 0, l2_normalize: bool = False,
                   overwrite: bool = False) -> dict[str, Any]:
  """Converts feature files into a one-split prepared corpus without queries; returns its manifest.

  Names, shapes, dtypes, durations and subtitle files are checked for every
  video before anything is written; values (NaN/Inf) as each video is read.
  """
  records.require_at_least("seconds_per_row", seconds_per_row, 1e-3, "seconds one feature row covers")
  records.require_at_least("videos_per_shard", videos_per_shard, 1, "videos per TFRecord shard")
  records.require_at_least("max_frames", max_frames, 0, "rows per video after resampling; 0 keeps every row")
  records.require_at_least("subtitle_dim", subtitle_dim, 0, "width of the zero subtitle stream; 0: none")
  if not re.fullmatch(r"[a-z][a-z0-9_]*", split or ""):
    raise ArgumentError("split", split, "a split name is lower-case letters, digits and _ (e.g. corpus)")
  if durations and not os.path.isfile(durations):
    raise DataError(durations, "<file>", "durations", "durations file does not exist")
  visual = features.FeatureFile(features_path, "video")
  subs = features.SubtitleFeatures(subtitle_features) if subtitle_features else None
  try:
    return _convert(out_dir, visual, subs, subtitle_dim=subtitle_dim, subtitles=subtitles,
                    seconds_per_row=seconds_per_row, durations=durations, split=split,
                    videos_per_shard=videos_per_shard, max_frames=max_frames, l2_normalize=l2_normalize,
                    overwrite=overwrite)
  finally:
    visual.close()
    if subs:
      subs.close()


def _convert(out_dir: str, visual: features.FeatureFile, subs: features.SubtitleFeatures | None, *,
             subtitle_dim: int, subtitles: str, seconds_per_row: float, durations: str, split: str,
             videos_per_shard: int, max_frames: int, l2_normalize: bool, overwrite: bool) -> dict[str, Any]:
  log = RepairLog()
  names = visual.names()
  if not names:
    raise DataError(visual.path, "<folder>" if os.path.isdir(visual.path) else "<file>", "video",
                    "no video: expected <video name>.npy or .npz files, or an h5 file keyed by video name")
  video_dim = features.check_videos(visual, names)
  rows = {n: visual.shape(n)[0] for n in names}
  if durations:
    seconds = read_durations(durations)
    for n in names:
      if n not in seconds:
        raise DataError(durations, f"video {n}", "duration", f"no duration for this video (its features are in "
                        f"{visual.path}); give every video a duration, or leave --durations out")
      _check_rows(visual, n, rows[n], seconds[n], seconds_per_row, durations, log)
    for n in sorted(set(seconds) - set(names)):
      log.note("videos in --durations without features (left out)", n)
  else:
    seconds = {n: rows[n] * seconds_per_row for n in names}
  if subs:
    width = subs.check(names)
    if subtitle_dim and subtitle_dim != width:
      raise ArgumentError("subtitle_dim", subtitle_dim, f"differs from the width {width} of --subtitle_features="
                          f"{subs.file.path}: leave --subtitle_dim out")
    subtitle_dim = width
    stream = (f"subtitle features of {subs.file.path} ({width} wide); videos absent from it get zeros with mask 0, "
              "as TVR does")
  elif subtitle_dim:
    stream = (f"no --subtitle_features: zeros {subtitle_dim} wide with mask 0 for every video, as the paper and "
              "TVR do for videos without subtitles")
  else:
    stream = ("none (no --subtitle_features, --subtitle_dim=0): for models trained without subtitles; "
              "--subtitle_dim=N gives zero rows N wide")
  lines, line_files = subtitle_lines.read_subtitle_lines(subtitles) if subtitles else ({}, [])
  for n in sorted(set(lines) - set(names)):
    log.note("videos in --subtitles without features (left out)", n)
  for n in names if subtitles else []:
    if not lines.get(n):
      log.note("videos without subtitle lines in --subtitles", n)
  entries = [VideoEntry(n, i, float(seconds[n]), []) for i, n in enumerate(names)]

  def load_video(entry: VideoEntry, video_log: RepairLog):
    video = visual.read(entry.vid_name)
    if l2_normalize:
      video = features.l2_normalize(video)
    n_rows = video.shape[0]
    if subs:
      sub, mask, reason = subs.read(entry.vid_name, n_rows, subtitle_dim)
      if reason:
        video_log.repair(reason, entry.vid_name)
    elif subtitle_dim:
      sub, mask = np.zeros((n_rows, subtitle_dim), np.float32), np.zeros((n_rows,), np.int32)
    else:
      sub = mask = None
    if not max_frames or n_rows <= max_frames:
      return video, sub, mask, seconds_per_row
    video_log.repair(f"resampled to {max_frames} rows by average pooling", entry.vid_name)
    video = features.average_pool_rows(video, max_frames)
    if sub is not None:
      sub = features.average_pool_rows(sub, max_frames)
      mask = (features.average_pool_rows(mask[:, None].astype(np.float32), max_frames)[:, 0] > 0).astype(np.int32)
    return video, sub, mask, entry.duration / video.shape[0]

  inputs = [*visual.file_paths(), *(subs.file.file_paths() if subs else []), durations, *line_files]
  with PreparedWriter(
      out_dir, source="corpus", video_dim=video_dim, subtitle_dim=subtitle_dim, checkpoint=None, vocab_sha256=None,
      videos_per_shard=videos_per_shard, splits=[split], overwrite=overwrite,
      build_args={"features": visual.path, "subtitle_features": subs.file.path if subs else "",
                  "subtitle_dim": subtitle_dim, "subtitles": subtitles, "durations": durations,
                  "seconds_per_row": seconds_per_row, "max_frames": max_frames, "l2_normalize": l2_normalize,
                  "inputs": records.input_fingerprint(inputs)}) as writer:
    if writer.up_to_date:
      return dict(writer.up_to_date, up_to_date=True)
    writer.write_split(split, entries, [], load_video, log, has_ground_truth=False)
    lines_file = writer.write_file(SUBTITLE_LINES_FILE, subtitle_lines.to_jsonl(lines, names)) if subtitles else None
    return writer.finalize({"video2idx": {split: {e.vid_name: e.video_index for e in entries}},
                            "frame_seconds": None if max_frames else seconds_per_row,
                            "max_frames_prepared": max_frames or None, "subtitle_stream": stream,
                            "subtitle_lines": lines_file})


def _prepare(f) -> dict:
  return prepare_corpus(f.out_dir, features_path=f.features, subtitle_features=f.subtitle_features,
                        subtitle_dim=f.subtitle_dim, subtitles=f.subtitles, seconds_per_row=f.seconds_per_row,
                        durations=f.durations, split=f.split, videos_per_shard=f.videos_per_shard,
                        max_frames=f.max_frames, l2_normalize=f.l2_normalize, overwrite=f.overwrite)


def _define_flags():
  from absl import flags
  flags.DEFINE_string("features", None, "Folder of <video>.npy|.npz, or an h5 file keyed by video name.",
                      required=True)
  flags.DEFINE_string("out_dir", None, "Output folder for the prepared corpus.", required=True)
  flags.DEFINE_string("subtitle_features", "", "Subtitle features, same layouts (TVR's sub h5); '' = zeros.")
  flags.DEFINE_integer("subtitle_dim", 0, "Width of the zero subtitle stream without --subtitle_features "
                       "(the model's subtitle width; 0 = no subtitle stream).")
  flags.DEFINE_string("subtitles", "", "Subtitle lines to show: folder of <video>.srt|.vtt, or TVR's subtitle jsonl.")
  flags.DEFINE_float("seconds_per_row", 1.5, "Seconds covered by one feature row (TVR: 1.5).")
  flags.DEFINE_string("durations", "", "Video durations: JSON {name: seconds} or CSV/TSV name,seconds "
                      "(default: rows x seconds_per_row).")
  flags.DEFINE_string("split", "corpus", "Name of the one split written.")
  flags.DEFINE_integer("videos_per_shard", 256, "Videos per TFRecord shard.")
  flags.DEFINE_integer("max_frames", 0, "Average-pool each video to at most this many rows (0: keep every row).")
  flags.DEFINE_bool("l2_normalize", False, "L2-normalise each feature row (as the model's training features were).")
  flags.DEFINE_bool("overwrite", False, "Replace an out_dir that holds other splits or is not a prepared dataset.")


if __name__ == "__main__":
  cli.main(_define_flags, _prepare)
