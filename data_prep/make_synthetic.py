"""A small synthetic corpus in the TVR release layout, for demos and tests.

`python -m data_prep.make_synthetic --out_dir=DIR [--seed=0 --num_train_videos=300
--num_val_videos=60 --num_test_videos=60 --queries_per_video=5 --visual_dim=128
--subtitle_dim=64]`, or `make_synthetic_corpus(out_dir, seed=0, ...)`. It writes
exactly what a TVR user has (`docs/data_format.md`), so the demo and the tests go
through the same converter and input pipeline as real data:

  tvr_{train,val}_release.jsonl     {"vid_name", "duration", "ts": [st, ed], "desc", "type", "desc_id"}
  tvr_test_public_release.jsonl     {"desc", "desc_id"} only
  synthetic_test_answers.jsonl      the test queries in the full format (to score them)
  tvr_video2dur_idx.json            {"train"|"val"|"test_public": {vid_name: [duration, idx]}}
                                    (the real file's key for the public test split)
  video_feature.h5                  vid_name -> float32 [n_clips, visual_dim]
  sub_feature.h5                    vid_name -> float32 [n_clips, subtitle_dim],
                                    vid_name + "-mask" -> float32 [n_clips]
  chance.json                       chance levels of the val and test splits (percent)
  synthetic_manifest.json           arguments + file sizes, written last

`n_clips = ceil(duration / 1.5)`: one feature row per 1.5 s, as in TVR.

Design. `CONCEPTS` are 55 English words (agents, actions, objects, places, colours),
each a single WordPiece token of the uncased BERT vocabulary. Every concept has a
random unit direction in the visual space and another in the subtitle space (fixed
by the seed; orthonormal when the width is >= 55, so concepts do not leak into each
other's projections, random otherwise). A feature row is small Gaussian noise (norm about `NOISE_NORM`) plus
the sum of the directions of the concepts present at that time:
- background: one place (and sometimes an object or colour) over 70-100% of the
  video, visual only, so a query is needed to retrieve a video (not any frame);
- moments: `queries_per_video` non-nested (possibly overlapping) spans of 2-8 rows,
  each carrying a 2-3 concept combination at amplitude ~`SIGNAL` (above the noise);
  the query names exactly these concepts through one of two paraphrases of its
  combination's template (7 templates; 3-concept ones twice as likely), so the
  model must read words, not sentence shapes. Fresh combinations avoid concept
  sets already used in the split (until a big split runs out of them). Query type decides where the concepts
  go: "v" visual only, "t" subtitle only (mask forced to 1 there), "vt" both
  (about 40/20/40; videos without subtitles only get "v");
- confusers, so the task is learnable but not trivial: `REUSE_P` of the moments
  copy an exact combination of another video of the split (inherently ambiguous
  retrieval, as in TVR), and every video carries 1-2 distractor spans with a proper
  subset of another moment's concepts (partial matches elsewhere and in-video);
  places favour the video's background place, which other videos share.
  With the defaults, a bag-of-concepts oracle (max over rows of the summed
  projections on the query's concepts) puts the right val video first for ~68% of
  queries and in the top 5 for ~99% (chance: 1.7% and 8.3%).
- subtitles: about half the rows have a "subtitle" (noise + subtitle concepts, mask
  1); the rest are zeros with mask 0; ~1 video in 30 is absent from sub_feature.h5.
Ground truth `[st, ed]` (seconds, 2 decimals) is jittered inside the planted rows'
first/last 1.5 s so that `start = floor(st / 1.5)`, `end = ceil(ed / 1.5) - 1` gives
back exactly the planted rows (checked for every query).

Chance levels (`chance.json`, percent): what a predictor that ignores the input
scores, by exact formulas (`chance_levels.py`).

Splits are generated from independent random streams, so e.g. the val videos and
queries (all but their desc_id, numbered across splits) do not change with
`num_train_videos`. Same arguments -> byte-identical files, the h5 files included.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from data_prep import tvr_durations
from data_prep.chance_levels import FRAME_SECONDS, chance_levels, format_chance_levels
from data_prep.chance_levels import h5_writer as _h5_writer
from hammer_jax import files
from hammer_jax.data import alignment

SPLITS = ("train", "val", "test_public")  # `test_public`: the real video2dur_idx key.
JSONL = {"train": "tvr_train_release.jsonl", "val": "tvr_val_release.jsonl",
         "test_public": "tvr_test_public_release.jsonl"}
ANSWERS = "synthetic_test_answers.jsonl"
VIDEO2DUR = "tvr_video2dur_idx.json"
VIDEO_H5 = "video_feature.h5"
SUB_H5 = "sub_feature.h5"
CHANCE = "chance.json"
MANIFEST = "synthetic_manifest.json"
FORMAT_VERSION = 1  # Bump when the generated data changes for the same arguments.

CATEGORIES = {
    "agent": ("man", "woman", "boy", "girl", "dog", "cat", "doctor", "baby", "teacher", "soldier"),
    "action": ("running", "eating", "dancing", "singing", "reading", "drinking", "sleeping",
               "cooking", "talking", "walking", "laughing", "crying", "fighting", "driving",
               "swimming"),
    "object": ("guitar", "car", "phone", "book", "ball", "door", "table", "window", "coffee",
               "bottle", "gun", "bed", "computer", "letter"),
    "place": ("kitchen", "park", "beach", "office", "hospital", "street", "garden", "bar",
              "church", "school"),
    "colour": ("red", "blue", "green", "yellow", "black", "white"),
}
CONCEPTS = tuple(w for words in CATEGORIES.values() for w in words)
CONCEPT_INDEX = {w: i for i, w in enumerate(CONCEPTS)}
# (slots, paraphrases): several phrasings per combination, and filler words that
# are never concepts, so `concepts_of(desc)` recovers a query's concepts.
TEMPLATES = (
    (("agent", "action"), ("the {agent} is {action}.", "a {agent} is {action} here.")),
    (("agent", "action", "place"), ("the {agent} is {action} in the {place}.",
                                    "in the {place}, a {agent} is {action}.")),
    (("agent", "object"), ("the {agent} picks up the {object}.", "a {agent} looks at a {object}.")),
    (("agent", "colour", "object"), ("the {agent} holds a {colour} {object}.",
                                     "a {agent} looks at the {colour} {object}.")),
    (("colour", "object", "place"), ("a {colour} {object} is in the {place}.",
                                     "in the {place} there is a {colour} {object}.")),
    (("agent", "action", "object"), ("the {agent} is {action} near the {object}.",
                                     "a {agent} is {action} next to a {object}.")),
    (("object", "place"), ("someone leaves the {object} in the {place}.",
                           "the {object} is in the {place}.")),
)
# 3-concept combinations twice as often: there are few 2-concept ones, so they
# collide across videos more.
TEMPLATE_P = np.array([len(slots) - 1.0 for slots, _ in TEMPLATES]) / sum(len(s) - 1.0 for s, _ in TEMPLATES)
TYPES, TYPE_P = ("v", "t", "vt"), (0.4, 0.2, 0.4)
NOISE_NORM = 0.8      # Expected L2 norm of a row's noise.
SIGNAL = 1.0          # Moment concept amplitude, x U[JITTER] per concept and modality.
JITTER = (0.7, 1.2)
BACKGROUND = 0.6      # Background concept amplitude (x U[0.8, 1.2]).
DISTRACTORS = (1, 2)  # Distractor spans per video (min, max).
REUSE_P = 0.05        # Fraction of moments copying another video's exact combination.
SUBTITLE_P = 0.5      # Fraction of rows with a subtitle outside "t"/"vt" moments.


def concepts_of(desc: str) -> list[str]:
  """The concepts a query names, in order (filler words are never concepts)."""
  return [w for w in desc.lower().replace(".", " ").replace(",", " ").split() if w in CONCEPT_INDEX]


def concept_directions(seed: int, visual_dim: int, subtitle_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Unit directions per concept: (visual [C, visual_dim], subtitle [C, subtitle_dim])."""
  out = []
  for stream, dim in ((101, visual_dim), (102, subtitle_dim)):
    d = np.random.default_rng([seed, stream]).standard_normal((max(dim, len(CONCEPTS)), dim))
    if dim >= len(CONCEPTS):  # Orthonormal rows of a random rotation: no cross-talk.
      d = np.linalg.qr(d)[0][:len(CONCEPTS)]
    out.append((d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32))
  return out[0], out[1]


def _place_moments(rng: np.random.Generator, n: int, k: int) -> list[tuple[int, int]]:
  """k non-nested [s, e] row spans (2..8 rows) in n rows: distinct sorted starts,
  strictly increasing ends. Consecutive spans may overlap by at most half the shorter
  one and no row is in three spans, so most of a moment carries only its own
  concepts. Shorter spans, then fewer than k, only if k cannot fit otherwise."""
  for max_len in range(min(8, max(2, n // 2)), 1, -1):
    for _ in range(100 if k <= n // 2 else 20):
      starts = np.sort(rng.choice(n - 1, size=min(k, n - 1), replace=False))
      ends = np.minimum(starts + rng.integers(2, max_len + 1, size=len(starts)) - 1, n - 1)
      lens = ends - starts + 1
      overlap = ends[:-1] - starts[1:] + 1
      if (np.all(np.diff(ends) > 0) and np.all(lens >= 2)
          and np.all(overlap <= np.minimum(lens[:-1], lens[1:]) // 2)
          and np.all(starts[2:] > ends[:-2])):
        return [(int(s), int(e)) for s, e in zip(starts, ends)]
  return _place_moments(rng, n, k - 1) if k > 1 else []


def _seconds(rng: np.random.Generator, s: int, e: int, duration: float) -> tuple[float, float]:
  """[st, ed] inside the first/last row's 1.5 s so that the rule gives back (s, e)."""
  st = 0.0 if s == 0 and rng.random() < 0.3 else round(s * FRAME_SECONDS + rng.uniform(0.02, 1.45), 2)
  ed = min(round(e * FRAME_SECONDS + rng.uniform(0.05, FRAME_SECONDS), 2), duration)
  return st, ed


def _random_combo(rng: np.random.Generator, place: str) -> tuple[int, tuple[str, ...]]:
  """(template index, concepts by slot); places favour the video's background place."""
  t = int(rng.choice(len(TEMPLATES), p=TEMPLATE_P))
  words = tuple(place if slot == "place" and rng.random() < 0.5 else
                CATEGORIES[slot][rng.integers(len(CATEGORIES[slot]))] for slot in TEMPLATES[t][0])
  return t, words


def _make_split(split: str, split_id: int, n_videos: int, a: dict[str, Any],
                vis_dir: np.ndarray, sub_dir: np.ndarray) -> tuple[list[dict], list[dict]]:
  """Videos {vid_name, duration, video [n, Dv], subtitle [n, Ds] | None, mask [n]} and
  queries in the full TVR format (+ "concepts"), desc_id not yet assigned."""
  rng = np.random.default_rng([a["seed"], split_id])
  dv, ds = a["visual_dim"], a["subtitle_dim"]
  no_sub = set(rng.choice(n_videos, size=(n_videos + 29) // 30, replace=False).tolist()) if n_videos else set()
  videos, queries, used = [], [], []  # used: (video, template, concepts) of the split so far.
  seen = set()  # Concept sets of the split: fresh combinations avoid them where possible.
  for i in range(n_videos):
    name = f"synth_{split}_{i:04d}"
    if a["durations"] == "tvr":  # The real train distribution; at least 3 s (2 rows) for a moment.
      duration = round(max(3.0, tvr_durations.tvr_duration(rng.uniform())), 2)
    else:
      duration = round(float(rng.uniform(a["min_duration"], a["max_duration"])), 2)
    n = math.ceil(duration / FRAME_SECONDS)
    vis = rng.standard_normal((n, dv)) * (NOISE_NORM / math.sqrt(dv))
    sub = rng.standard_normal((n, ds)) * (NOISE_NORM / math.sqrt(ds))
    mask = (rng.random(n) < SUBTITLE_P).astype(np.float32)
    has_sub = i not in no_sub
    # Background: the scene's place (+ maybe an object/colour) over most of the video.
    place = CATEGORIES["place"][rng.integers(len(CATEGORIES["place"]))]
    background = [place] + ([str(rng.choice(CATEGORIES["object"] + CATEGORIES["colour"]))]
                            if rng.random() < 0.5 else [])
    for w in background:
      length = math.ceil(rng.uniform(0.7, 1.0) * n)
      s = int(rng.integers(n - length + 1))
      vis[s:s + length] += BACKGROUND * rng.uniform(0.8, 1.2) * vis_dir[CONCEPT_INDEX[w]]

    def plant(words, s, e, kind):  # kind: "v" | "t" | "vt".
      for w in words:
        if "v" in kind:
          vis[s:e + 1] += SIGNAL * rng.uniform(*JITTER) * vis_dir[CONCEPT_INDEX[w]]
        if "t" in kind:
          sub[s:e + 1] += SIGNAL * rng.uniform(*JITTER) * sub_dir[CONCEPT_INDEX[w]]
          mask[s:e + 1] = 1.0  # A subtitle-borne moment has subtitles on all its rows.

    mine = set()
    for s, e in _place_moments(rng, n, a["queries_per_video"]):
      others = [u for u in used if u[0] != i and frozenset(u[2]) not in mine]
      if others and rng.random() < REUSE_P:  # Exact copy: the query is ambiguous across videos.
        t, words = others[rng.integers(len(others))][1:]
      else:
        for attempt in range(50):  # Ambiguity only where REUSE_P asks for it.
          t, words = _random_combo(rng, place)
          if len(set(words)) == len(words) and frozenset(words) not in mine and (
              frozenset(words) not in seen or attempt >= 40):  # A big split runs out.
            break
      mine.add(frozenset(words))
      seen.add(frozenset(words))
      used.append((i, t, words))
      qtype = str(rng.choice(TYPES, p=TYPE_P)) if has_sub else "v"
      plant(words, s, e, qtype)
      phrasing = TEMPLATES[t][1][rng.integers(len(TEMPLATES[t][1]))]
      desc = phrasing.format(**dict(zip(TEMPLATES[t][0], words)))
      st, ed = _seconds(rng, s, e, duration)
      assert tuple(int(x) for x in alignment.seconds_to_frames(st, ed, FRAME_SECONDS, n)) == (s, e), (name, s, e)
      queries.append({"vid_name": name, "duration": duration, "ts": [st, ed],
                      "desc": desc[0].upper() + desc[1:], "type": qtype, "concepts": list(words)})
    # Distractors: a proper subset of another moment's concepts, elsewhere.
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
      src = used[rng.integers(len(used))][2] if used else _random_combo(rng, place)[1]
      words = [str(w) for w in rng.permutation(src)[:rng.integers(1, len(src))]]
      length = int(rng.integers(2, min(6, n) + 1))
      s = int(rng.integers(n - length + 1))
      plant(words, s, s + length - 1, str(rng.choice(TYPES)) if has_sub else "v")
    sub *= mask[:, None]  # Rows without a subtitle are exactly zero.
    videos.append({"vid_name": name, "duration": duration, "video": vis.astype(np.float32),
                   "subtitle": sub.astype(np.float32) if has_sub else None,
                   "mask": mask if has_sub else np.zeros(n, np.float32)})
  order = rng.permutation(len(queries))  # Line order does not reveal the video grouping.
  return videos, [queries[j] for j in order]


def _jsonl(rows: list[dict]) -> str:
  return "".join(json.dumps(r) + "\n" for r in rows)


def _corpus_complete(out_dir: str, args: dict[str, Any]) -> dict[str, Any] | None:
  """The manifest if it matches `args` and every file it lists is intact, else None."""
  try:
    with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  if manifest.get("args") != args or manifest.get("format_version") != FORMAT_VERSION:
    return None
  for name, size in manifest.get("files", {}).items():
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path) or os.path.getsize(path) != size:
      return None
  return manifest


def make_synthetic_corpus(out_dir: str, *, seed: int = 0, num_train_videos: int = 300,
                          num_val_videos: int = 60, num_test_videos: int = 60,
                          queries_per_video: int = 5, visual_dim: int = 128,
                          subtitle_dim: int = 64, min_duration: float = 15.0,
                          max_duration: float = 60.0, durations: str = "uniform",
                          verbose: bool = True) -> dict[str, Any]:
  """Writes (or finds up to date) a synthetic TVR-layout corpus in `out_dir`.

  durations: "uniform" in [min_duration, max_duration], or "tvr": the real TVR
  train split's distribution (data_prep/tvr_durations.py; min/max ignored).
  Returns {"out_dir", "skipped" (True: the complete corpus was already there),
  "args", "splits": {split: {videos, queries, frames, videos_without_subtitles,
  types}}, "chance": chance.json's content, "seconds"}.
  """
  t0 = time.time()
  args = {"seed": seed, "num_train_videos": num_train_videos, "num_val_videos": num_val_videos,
          "num_test_videos": num_test_videos, "queries_per_video": queries_per_video,
          "visual_dim": visual_dim, "subtitle_dim": subtitle_dim,
          "min_duration": float(min_duration), "max_duration": float(max_duration), "durations": durations}
  if durations not in ("uniform", "tvr"):
    raise ValueError(f"durations must be 'uniform' or 'tvr', got {durations!r}")
  if not 3.0 <= min_duration <= max_duration:
    raise ValueError(f"need 3 <= min_duration <= max_duration, got {min_duration}, {max_duration}")
  os.makedirs(out_dir, exist_ok=True)
  manifest = _corpus_complete(out_dir, args)
  if manifest is not None:
    summary = dict(manifest["summary"], out_dir=out_dir, skipped=True, seconds=time.time() - t0)
    if verbose:
      print(f"synthetic corpus in {out_dir} is complete for these arguments: nothing to do")
    return summary
  # Invalidate first: an interrupted run over an old corpus must not look complete.
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    os.remove(os.path.join(out_dir, MANIFEST))
  for name in os.listdir(out_dir):  # Temp files a killed run left behind.
    if name.startswith(".") and ".tmp-" in name:  # files.temporary_path
      os.remove(os.path.join(out_dir, name))

  vis_dir, sub_dir = concept_directions(seed, visual_dim, subtitle_dim)
  sizes = dict(zip(SPLITS, (num_train_videos, num_val_videos, num_test_videos)))
  videos, queries = {}, {}
  next_id = 0
  for split_id, split in enumerate(SPLITS):
    videos[split], queries[split] = _make_split(split, split_id, sizes[split], args, vis_dir, sub_dir)
    for q in queries[split]:  # desc_id unique across splits.
      q["desc_id"], next_id = next_id, next_id + 1

  full = lambda q: {k: q[k] for k in ("vid_name", "duration", "ts", "desc", "type", "desc_id")}
  texts = {JSONL["train"]: _jsonl([full(q) for q in queries["train"]]),
           JSONL["val"]: _jsonl([full(q) for q in queries["val"]]),
           JSONL["test_public"]: _jsonl([{"desc": q["desc"], "desc_id": q["desc_id"]}
                                         for q in queries["test_public"]]),
           ANSWERS: _jsonl([full(q) for q in queries["test_public"]]),
           VIDEO2DUR: json.dumps({s: {v["vid_name"]: [v["duration"], i] for i, v in enumerate(videos[s])}
                                  for s in SPLITS})}
  chance = {s: chance_levels(queries[s], sizes[s]) for s in ("val", "test_public") if sizes[s]}
  texts[CHANCE] = json.dumps(chance, indent=1)
  all_videos = [v for s in SPLITS for v in videos[s]]
  vis_arrays = {v["vid_name"]: v["video"] for v in all_videos}
  sub_arrays = {}
  for v in all_videos:
    if v["subtitle"] is not None:
      sub_arrays[v["vid_name"]], sub_arrays[v["vid_name"] + "-mask"] = v["subtitle"], v["mask"]

  order = [JSONL["train"], JSONL["val"], JSONL["test_public"], ANSWERS, VIDEO2DUR]
  for name in order:
    files.atomic_write(os.path.join(out_dir, name), texts[name])
  files.atomic_write_with(os.path.join(out_dir, VIDEO_H5), _h5_writer(vis_arrays))
  files.atomic_write_with(os.path.join(out_dir, SUB_H5), _h5_writer(sub_arrays))
  files.atomic_write(os.path.join(out_dir, CHANCE), texts[CHANCE])

  splits = {}
  for s in SPLITS:
    types = [q["type"] for q in queries[s]]
    splits[s] = {"videos": len(videos[s]), "queries": len(queries[s]),
                 "frames": sum(len(v["video"]) for v in videos[s]),
                 "videos_without_subtitles": sum(v["subtitle"] is None for v in videos[s]),
                 "types": {t: types.count(t) for t in TYPES}}
  summary = {"args": args, "splits": splits, "chance": chance}
  sizes = {n: os.path.getsize(os.path.join(out_dir, n)) for n in order + [VIDEO_H5, SUB_H5, CHANCE]}
  manifest = {"format_version": FORMAT_VERSION, "args": args, "files": sizes, "summary": summary}
  files.atomic_write(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=1))
  summary = dict(summary, out_dir=out_dir, skipped=False, seconds=time.time() - t0)
  if verbose:
    print(format_summary(summary))
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """Human-readable counts and chance levels."""
  lines = [f"synthetic TVR corpus in {summary['out_dir']} (seed {summary['args']['seed']}, "
           f"{summary['seconds']:.1f} s)"]
  for s, c in summary["splits"].items():
    lines.append(f"  {s:12s} {c['videos']:5d} videos {c['queries']:6d} queries {c['frames']:7d} frames, "
                 f"{c['videos_without_subtitles']} videos without subtitles, types {c['types']}")
  lines += [format_chance_levels(split, levels) for split, levels in summary["chance"].items()]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  make_synthetic_corpus(f.out_dir, seed=f.seed, num_train_videos=f.num_train_videos,
                        num_val_videos=f.num_val_videos, num_test_videos=f.num_test_videos,
                        queries_per_video=f.queries_per_video, visual_dim=f.visual_dim,
                        subtitle_dim=f.subtitle_dim, min_duration=f.min_duration,
                        max_duration=f.max_duration, durations=f.durations)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out_dir", None, "Folder to write the corpus into.", required=True)
  flags.DEFINE_integer("seed", 0, "Random seed (same seed -> identical corpus).")
  flags.DEFINE_integer("num_train_videos", 300, "Videos in the train split.")
  flags.DEFINE_integer("num_val_videos", 60, "Videos in the val split.")
  flags.DEFINE_integer("num_test_videos", 60, "Videos in the test_public split.")
  flags.DEFINE_integer("queries_per_video", 5, "Moments (= queries) per video.")
  flags.DEFINE_integer("visual_dim", 128, "Width of the visual features.")
  flags.DEFINE_integer("subtitle_dim", 64, "Width of the subtitle features.")
  flags.DEFINE_float("min_duration", 15.0, "Shortest video, seconds.")
  flags.DEFINE_float("max_duration", 60.0, "Longest video, seconds.")
  flags.DEFINE_enum("durations", "uniform", ["uniform", "tvr"],
                    "uniform: between min/max_duration; tvr: the real TVR train distribution.")
  app.run(main)
