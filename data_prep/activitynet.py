r"""Prepares ActivityNet Captions as TFRecord shards for hammer_jax.

  python -m data_prep.activitynet --annotation_dir=DIR --video_feature=i3d.h5 \
      --out_dir=data/anet_prepared [--max_frames=128]

The annotation folder holds the official `train.json`, `val_1.json`, `val_2.json`
(missing files are skipped). `--video_feature` is one h5 file (`video_id ->
[T, D]`) or a folder of `<video_id>.npy` files: I3D (1024-d, 1 FPS) or
ResNet-152 (2048-d, 6 FPS). Each video is resampled to at most `max_frames` rows
by average pooling (paper: 128), so one row covers `duration / N` seconds.
Reversed timestamps and ends past the duration are repaired and counted.
"""

from __future__ import annotations

from typing import Any

from data_prep import annotations, cli, features, records
from data_prep.prepared_writer import PreparedWriter
from data_prep.records import Query, RepairLog, VideoEntry
from hammer_jax.model import pretrained

SPLIT_FILES = {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"}


def prepare_activitynet(out_dir: str, *, annotation_dir: str = "", split_files: dict[str, str] | None = None,
                        video_feature: str, text_checkpoint: str = pretrained.DEFAULT_CHECKPOINT,
                        max_frames: int = 128, max_query_len: int = 64, videos_per_shard: int = 256,
                        missing_videos: str = "error", overwrite: bool = False) -> dict[str, Any]:
  """Converts ActivityNet Captions; returns the `prepared.json` manifest."""
  if missing_videos not in ("error", "drop"):
    raise ValueError(f"missing_videos must be 'error' or 'drop', got {missing_videos!r}")
  records.require_at_least("max_frames", max_frames, 1, "rows per video after resampling")
  records.require_at_least("videos_per_shard", videos_per_shard, 1, "videos per TFRecord shard")
  records.require_at_least("max_query_len", max_query_len, 3, "[CLS], at least one token, [SEP]")
  files = annotations.annotation_files(annotation_dir, split_files, SPLIT_FILES)
  ckpt = pretrained.resolve_checkpoint_dir(text_checkpoint, need_weights=False)
  tokenizer = pretrained.load_tokenizer(ckpt)
  feats = features.FeatureFile(video_feature, "video")

  def convert() -> dict[str, Any]:
    parsed: dict[str, tuple[list[VideoEntry], list[Query], RepairLog]] = {}
    for split, path in files.items():
      log = RepairLog()
      queries = annotations.read_activitynet_json(path, log)
      queries = annotations.tokenize_queries(queries, tokenizer, max_query_len, log, path)
      by_video: dict[str, list[Query]] = {}
      for q in queries:
        by_video.setdefault(q.vid_name, []).append(q)
      names = list(by_video)
      if missing_videos == "drop":
        for n in [n for n in names if n not in feats]:
          log.drop("video missing from the feature file", n)
          for q in by_video[n]:
            log.drop("query of a dropped video", f"{n} desc_id {q.desc_id}")
        names = [n for n in names if n in feats]
      entries = [VideoEntry(n, i, by_video[n][0].duration, by_video[n]) for i, n in enumerate(names)]
      if split == "train":
        entries = records.shuffled_for_training(entries)
      queries = [q for e in entries for q in e.queries]
      annotations.require_queries(split, path, queries, entries, log)
      parsed[split] = (entries, queries, log)
    annotations.check_train_videos_not_evaluated(
        {split: (files[split], [e.vid_name for e in entries]) for split, (entries, _, _) in parsed.items()})

    all_names = sorted({e.vid_name for entries, _, _ in parsed.values() for e in entries})
    video_dim = features.check_videos(feats, all_names)

    def load_video(entry: VideoEntry, log: RepairLog):
      raw = feats.read(entry.vid_name)
      video = features.average_pool_rows(raw, max_frames)
      if video.shape[0] < raw.shape[0]:
        log.repair(f"resampled to {max_frames} rows by average pooling", entry.vid_name)
      return video, None, None, entry.duration / video.shape[0]

    with PreparedWriter(
        out_dir, source="activitynet", video_dim=video_dim, subtitle_dim=0,
        checkpoint=pretrained.portable_name(text_checkpoint, ckpt),
        vocab_sha256=pretrained.vocab_fingerprint(ckpt), videos_per_shard=videos_per_shard, splits=list(parsed),
        overwrite=overwrite,
        build_args={"files": files, "video_feature": video_feature, "max_frames": max_frames,
                    "max_query_len": max_query_len, "missing_videos": missing_videos,
                    "inputs": records.input_fingerprint([*files.values(), video_feature])}) as writer:
      if writer.up_to_date:
        return dict(writer.up_to_date, up_to_date=True)
      for split, (entries, queries, log) in parsed.items():
        writer.write_split(split, entries, queries, load_video, log, has_ground_truth=True)
      return writer.finalize({"video2idx": {s: {e.vid_name: e.video_index for e in p[0]} for s, p in parsed.items()},
                              "frame_seconds": None, "max_frames_prepared": max_frames,
                              "max_query_len_prepared": max_query_len})

  try:
    return convert()
  finally:
    feats.close()


SPLIT_FLAGS = {"train": ("train_file", "train.json"), "val_1": ("val_1_file", "val_1.json"),
               "val_2": ("val_2_file", "val_2.json")}


def _prepare(f) -> dict:
  return prepare_activitynet(**cli.common_args(f, SPLIT_FLAGS), video_feature=f.video_feature,
                             max_frames=f.max_frames)


def _define_flags():
  from absl import flags
  cli.define_common_flags("Folder with train.json, val_1.json, val_2.json.", SPLIT_FLAGS)
  flags.DEFINE_string("video_feature", None, "Feature h5 file or folder of <video_id>.npy.", required=True)
  flags.DEFINE_integer("max_frames", 128, "Rows per video after average-pool resampling.")


if __name__ == "__main__":
  cli.main(_define_flags, _prepare)
