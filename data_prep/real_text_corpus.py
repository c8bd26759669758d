"""Corpora whose query text is real: real TVR / ActivityNet annotations over designed features.

The synthetic demo corpus names a few planted concepts in template sentences;
a model that learns it has not shown it can read real query language. Here the
queries, durations, moments and query types are the real release's (read from
the annotation files the user names, e.g. the TVR val release), and only the
features are made, so that what a query says is recoverable from its moment:

  * every content word `w` (lower-cased alphabetic words minus `STOPWORDS`) has
    a fixed unit direction per stream (seeded by the word itself, so the same
    word leaves the same trace in every video and split);
  * a moment's rows carry `WORD` x the direction of each content word of its
    query, in the visual stream for type "v", the subtitle stream for "t", both
    for "vt" (ActivityNet: visual only); TVR's five queries of a video overlap
    and their traces add;
  * under them, every row holds the show's direction (`SHOW`; TVR's six shows
    from the video names, one per ActivityNet video category-free corpus: none),
    one of the video's 1-3 scene directions (`SCENE`), and Gaussian noise
    (norm `NOISE`).

So the other queries of the same video and of the same show are real
distractors (the same character names recur across a show), a word never seen
in training carries nothing a model could learn, and a linear bag-of-words
learner (benchmarks/linear_reference.py) sets how much is learnable.

  python -m data_prep.real_text_corpus --source=tvr \
      --annotations=../shared/data/tvr/tvr_val_release.jsonl --out_dir=DIR [--num_videos=400]

writes the release layout that `data_prep.tvr` (TVR: `tvr_{train,val}_release.jsonl`,
`tvr_video2dur_idx.json`, `video_feature.h5`, `sub_feature.h5`) or
`data_prep.activitynet` (`train.json`, `val_1.json`, `video_feature.h5` at one row
per second) reads, plus `chance.json` (exact chance levels, make_synthetic's
formulas) and a manifest written last (same arguments: nothing to do).
Videos are split by video (`val_fraction` of them for val).
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from typing import Any

import numpy as np

from data_prep import chance_levels, make_synthetic
from hammer_jax import files
from hammer_jax.data import alignment

FORMAT_VERSION = 1
TVR_FRAME_SECONDS = 1.5   # one TVR feature row per 1.5 s
ANET_FRAME_SECONDS = 1.0  # ActivityNet I3D features: one row per second (resampled at preparation)
NOISE = 1.0               # expected L2 norm of a row's noise
SHOW = 1.0                # amplitude of the show's direction (every row of the show's videos)
SCENE = 1.0               # amplitude of the current scene's direction
WORD = 0.4                # amplitude of each content word's direction over its moment
SUBTITLE_P = 0.6          # rows with a subtitle outside subtitle-borne moments
STOPWORDS = frozenset("""
a an the and or but if then than so as of to in on at by for with from into onto over under up down out off
about after before while when where what who whom whose which why how this that these those there here
is are was were be been being am do does did doing has have had having will would can could should may
might must shall it its he him his she her hers they them their theirs we us our you your yours i me my
not no yes also just very too all any some each other another one two both again back away around through
s t
""".split())


def content_words(text: str) -> list[str]:
  """A query's content words, in order (lower-case alphabetic, stop words removed)."""
  return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS]


def show_of(vid_name: str) -> str:
  """TVR's show from a video name (Big Bang Theory names carry no prefix)."""
  head = vid_name.split("_")[0]
  return "bbt" if re.fullmatch(r"s\d+e\d+", head) else head


def _direction(seed: int, key: str, stream: int, dim: int) -> np.ndarray:
  v = np.random.default_rng([seed, stream, zlib.crc32(key.encode("utf-8"))]).standard_normal(dim)
  return (v / np.linalg.norm(v)).astype(np.float32)


def read_tvr(path: str) -> dict[str, list[dict]]:
  """vid_name -> its queries (TVR release records), in file order."""
  by_video: dict[str, list[dict]] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        by_video.setdefault(r["vid_name"], []).append(r)
  return by_video


def read_activitynet(path: str) -> dict[str, list[dict]]:
  """video id -> its captions as TVR-style records (type "v"; desc_id numbered in file order)."""
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  by_video, desc_id = {}, 0
  for vid, entry in raw.items():
    rows = []
    for (st, ed), sentence in zip(entry["timestamps"], entry["sentences"]):
      st, ed = sorted((max(0.0, float(st)), min(float(ed), float(entry["duration"]))))
      if ed > st and sentence.strip():
        rows.append({"vid_name": vid, "duration": float(entry["duration"]), "ts": [st, ed],
                     "desc": sentence.strip(), "type": "v", "desc_id": desc_id})
      desc_id += 1
    if rows:
      by_video[vid] = rows
  return by_video


def _video_features(rng, queries: list[dict], n: int, frame_seconds: float, show: str | None, a: dict,
                    with_subtitles: bool):
  """(visual [n, Dv], subtitle [n, Ds] | None, mask [n]) of one video."""
  dv, ds, seed = a["visual_dim"], a["subtitle_dim"], a["seed"]
  vis = rng.standard_normal((n, dv)) * (NOISE / math.sqrt(dv))
  if show is not None:
    vis += SHOW * _direction(seed, "show:" + show, 0, dv)
  cuts = np.sort(rng.choice(np.arange(1, n), size=min(int(rng.integers(0, 3)), n - 1), replace=False))
  for s, e in zip(np.r_[0, cuts], np.r_[cuts, n]):  # 1-3 scenes, each its own random direction
    scene = rng.standard_normal(dv)
    vis[s:e] += SCENE * scene / np.linalg.norm(scene)
  sub = mask = None
  if with_subtitles:
    sub = rng.standard_normal((n, ds)) * (NOISE / math.sqrt(ds))
    if show is not None:
      sub += SHOW * _direction(seed, "show:" + show, 1, ds)
    mask = (rng.random(n) < SUBTITLE_P).astype(np.float32)
  for q in queries:
    s, e = alignment.seconds_to_frames(q["ts"][0], q["ts"][1], frame_seconds, n)
    s, e = int(s), int(e)
    for w in content_words(q["desc"]):
      if "v" in q["type"] or not with_subtitles:
        vis[s:e + 1] += WORD * _direction(seed, w, 0, dv)
      if "t" in q["type"] and with_subtitles:
        sub[s:e + 1] += WORD * _direction(seed, w, 1, ds)
        mask[s:e + 1] = 1.0  # a subtitle-borne moment has subtitles on all its rows
  if with_subtitles:
    sub *= mask[:, None]  # rows without a subtitle are exactly zero, as in TVR
  return vis.astype(np.float32), (None if sub is None else sub.astype(np.float32)), mask


def make_real_text_corpus(out_dir: str, *, annotations: str, source: str = "tvr", num_videos: int = 400,
                          val_fraction: float = 0.2, seed: int = 0, visual_dim: int = 128,
                          subtitle_dim: int = 64, verbose: bool = True) -> dict[str, Any]:
  """Writes (or finds complete) a corpus in `out_dir`; returns its summary (splits, chance)."""
  if source not in ("tvr", "activitynet"):
    raise ValueError(f"source must be 'tvr' or 'activitynet', got {source!r}")
  args = {"annotations": os.path.basename(annotations), "source": source, "num_videos": num_videos,
          "val_fraction": val_fraction, "seed": seed, "visual_dim": visual_dim, "subtitle_dim": subtitle_dim}
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, make_synthetic.MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
    if manifest.get("args") == args and manifest.get("format_version") == FORMAT_VERSION:
      if verbose:
        print(f"real-text corpus in {out_dir} is complete for these arguments: nothing to do")
      return manifest["summary"]
    os.remove(manifest_path)  # an interrupted rebuild must not look complete
  by_video = read_tvr(annotations) if source == "tvr" else read_activitynet(annotations)
  rng = np.random.default_rng([seed, 7])
  names = sorted(by_video)
  chosen = [names[i] for i in rng.choice(len(names), size=min(num_videos, len(names)), replace=False)]
  n_val = max(1, round(len(chosen) * val_fraction))
  splits = {"train": chosen[n_val:], "val": chosen[:n_val]}
  frame_seconds = TVR_FRAME_SECONDS if source == "tvr" else ANET_FRAME_SECONDS
  visual, subtitle = {}, {}
  for i, name in enumerate(chosen):
    qs = by_video[name]
    n = max(2, math.ceil(qs[0]["duration"] / frame_seconds))
    video_rng = np.random.default_rng([seed, 11, zlib.crc32(name.encode("utf-8"))])
    vis, sub, mask = _video_features(video_rng, qs, n, frame_seconds, show_of(name) if source == "tvr" else None,
                                     args, with_subtitles=source == "tvr")
    visual[name] = vis
    if sub is not None:
      subtitle[name], subtitle[name + "-mask"] = sub, mask
  queries = {s: [q for name in splits[s] for q in by_video[name]] for s in splits}
  chance = {"val": chance_levels.chance_levels(queries["val"], len(splits["val"]))}
  if source == "activitynet":  # chance_levels' frame grid is TVR's 1.5 s; ActivityNet's prepared rows differ
    chance["val"]["note"] = "moment chance on a 1.5 s grid (approximate for ActivityNet's 128 resampled rows)"
  jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)
  if source == "tvr":
    texts = {"tvr_train_release.jsonl": jsonl(queries["train"]), "tvr_val_release.jsonl": jsonl(queries["val"]),
             "tvr_video2dur_idx.json": json.dumps({s: {n: [by_video[n][0]["duration"], i]
                                                        for i, n in enumerate(splits[s])} for s in splits})}
  else:
    anet = lambda s: json.dumps({n: {"duration": by_video[n][0]["duration"],
                                     "timestamps": [q["ts"] for q in by_video[n]],
                                     "sentences": [q["desc"] for q in by_video[n]]} for n in splits[s]})
    texts = {"train.json": anet("train"), "val_1.json": anet("val")}
  texts[make_synthetic.CHANCE] = json.dumps(chance, indent=1)
  for name, text in texts.items():
    files.atomic_write(os.path.join(out_dir, name), text)
  files.atomic_write_with(os.path.join(out_dir, "video_feature.h5"), chance_levels.h5_writer(visual))
  if subtitle:
    files.atomic_write_with(os.path.join(out_dir, "sub_feature.h5"), chance_levels.h5_writer(subtitle))
  vocab = {s: {w for q in queries[s] for w in content_words(q["desc"])} for s in splits}
  summary = {"args": args, "out_dir": out_dir, "chance": chance,
             "splits": {s: {"videos": len(splits[s]), "queries": len(queries[s]), "content_words": len(vocab[s])}
                        for s in splits},
             "val_content_words_seen_in_train": len(vocab["val"] & vocab["train"])}
  files.atomic_write(manifest_path, json.dumps({"format_version": FORMAT_VERSION, "args": args,
                                                "summary": summary}, indent=1))
  if verbose:
    print(json.dumps(summary["splits"]), f"val words seen in train: {summary['val_content_words_seen_in_train']}")
  return summary


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  make_real_text_corpus(f.out_dir, annotations=f.annotations, source=f.source, num_videos=f.num_videos,
                        val_fraction=f.val_fraction, seed=f.seed, visual_dim=f.visual_dim,
                        subtitle_dim=f.subtitle_dim)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out_dir", None, "Folder to write the corpus into.", required=True)
  flags.DEFINE_string("annotations", None, "TVR release jsonl or ActivityNet Captions json.", required=True)
  flags.DEFINE_enum("source", "tvr", ["tvr", "activitynet"], "Annotation format (and output layout).")
  flags.DEFINE_integer("num_videos", 400, "Videos drawn from the annotation file.")
  flags.DEFINE_float("val_fraction", 0.2, "Fraction of the videos in the val split.")
  flags.DEFINE_integer("seed", 0, "Random seed (video choice and features).")
  flags.DEFINE_integer("visual_dim", 128, "Width of the visual features.")
  flags.DEFINE_integer("subtitle_dim", 64, "Width of the subtitle features (TVR).")
  app.run(main)
