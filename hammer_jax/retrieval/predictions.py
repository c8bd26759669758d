"""TVR prediction files: build, validate, write and load.

Layout (TVR standalone evaluation, jayleicn/TVRetrieval `standalone_eval`):

  {"video2idx": {vid_name: idx},
   "VCMR": [entry, ...], "SVMR": [entry, ...], "VR": [entry, ...]}   # any non-empty subset of tasks
  entry = {"desc_id": int, "desc": str, "predictions": [[vid_idx, st, ed, score], ...]}

- at most 100 predictions per entry, ranked best first (non-increasing score;
  the evaluation reads them in the given order and never re-sorts);
- st, ed in seconds, 0 <= st <= ed; VR predictions have st = ed = 0 and name
  each video at most once; SVMR predictions all name one video (the
  ground-truth one, which only the evaluation knows);
- at least one prediction per entry (the reference evaluation crashes on none).

`make_entry` sorts by score with a stable sort, so tied predictions keep the
order they were given in; this is the tie rule of the whole pipeline.
"""

from __future__ import annotations

import itertools
import json
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

from hammer_jax import files

TASKS = ("VCMR", "SVMR", "VR")
MAX_PREDICTIONS = 100
_COLUMNS = ("vid_idx", "st", "ed", "score")


class SubmissionError(ValueError):
  """A prediction file breaks the layout (one line naming the entry and field)."""


def make_entry(desc_id: int, desc: str, video_index, st, ed, score,
               max_predictions: int = MAX_PREDICTIONS) -> dict:
  """One entry from per-prediction arrays.

  Args:
    video_index: int [n]; st, ed: float [n] seconds; score: float [n].
  Returns:
    {"desc_id", "desc", "predictions": [[vid_idx, st, ed, score]] * min(n, max)},
    sorted by score descending (stable: ties keep the given order), plain Python
    numbers so that json round-trips them exactly.
  """
  video_index, st, ed, score = (np.asarray(x).reshape(-1) for x in (video_index, st, ed, score))
  if not len(video_index) == len(st) == len(ed) == len(score):
    raise ValueError(f"desc_id={desc_id}: video_index, st, ed, score have different lengths")
  order = np.argsort(-score.astype(np.float64), kind="stable")[:max_predictions]
  return {"desc_id": int(desc_id), "desc": str(desc),
          "predictions": [[int(video_index[i]), float(st[i]), float(ed[i]), float(score[i])] for i in order]}


def make_vr_entry(desc_id: int, desc: str, video_index, score, max_predictions: int = MAX_PREDICTIONS) -> dict:
  """A VR entry: videos [n] ranked by score [n]; st = ed = 0."""
  zeros = np.zeros(len(np.asarray(video_index).reshape(-1)))
  return make_entry(desc_id, desc, video_index, zeros, zeros, score, max_predictions)


def make_submission(video2idx: Mapping[str, int], vcmr: Sequence[dict] | None = None,
                    svmr: Sequence[dict] | None = None, vr: Sequence[dict] | None = None) -> dict:
  """The submission dict of the tasks given (entries from `make_entry`/`make_vr_entry`)."""
  out: dict[str, Any] = {"video2idx": {str(k): int(v) for k, v in video2idx.items()}}
  for task, entries in zip(TASKS, (vcmr, svmr, vr)):
    if entries is not None:
      out[task] = list(entries)
  return out


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _where(task: str, i: int, entry: Any) -> str:
  desc_id = entry.get("desc_id", "?") if isinstance(entry, dict) else "?"
  return f"{task}[{i}] (desc_id={desc_id!r})"


def _check_predictions(task: str, where: str, preds: list, known_videos: np.ndarray) -> None:
  """Checks one entry's prediction list; raises SubmissionError at the first problem."""
  if not preds:
    raise SubmissionError(f"{where}: field 'predictions' is empty (at least one prediction is needed)")
  if len(preds) > MAX_PREDICTIONS:
    raise SubmissionError(f"{where}: field 'predictions' has {len(preds)} predictions, at most {MAX_PREDICTIONS}")
  # Fast path: one array per entry (TVR val: ~10k entries x 100 predictions per task).
  try:
    arr = np.asarray(preds, np.float64)
    # numpy reads JSON true/false as 1/0; refuse them (a bool is never a meant number).
    ok = arr.ndim == 2 and arr.shape[1] == 4 and bool not in set(map(type, itertools.chain.from_iterable(preds)))
  except (ValueError, TypeError):
    ok = False
  if not ok:  # slow path: find the offending prediction to name it
    for j, p in enumerate(preds):
      if not isinstance(p, (list, tuple)) or len(p) != 4:
        raise SubmissionError(f"{where}: field 'predictions[{j}]' must be [vid_idx, st, ed, score]")
      for name, x in zip(_COLUMNS, p):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
          raise SubmissionError(f"{where}: field 'predictions[{j}].{name}' is not a number: {x!r:.40}")
    raise SubmissionError(f"{where}: field 'predictions' is not a [n, 4] table of numbers")

  def first_bad(mask) -> int:
    return int(np.flatnonzero(mask)[0])

  bad = ~np.isfinite(arr)
  if bad.any():
    j, c = np.argwhere(bad)[0]
    raise SubmissionError(f"{where}: field 'predictions[{j}].{_COLUMNS[c]}' is not finite")
  vid = arr[:, 0]
  if np.any(vid != np.round(vid)):
    j = first_bad(vid != np.round(vid))
    raise SubmissionError(f"{where}: field 'predictions[{j}].vid_idx' is not an integer: {float(vid[j])}")
  if len(known_videos):
    pos = np.minimum(np.searchsorted(known_videos, vid), len(known_videos) - 1)  # known_videos is sorted
    unknown = known_videos[pos] != vid
  else:
    unknown = np.ones(len(vid), bool)
  if unknown.any():
    j = first_bad(unknown)
    raise SubmissionError(f"{where}: field 'predictions[{j}].vid_idx' {int(vid[j])} is not an index of video2idx")
  st, ed, score = arr[:, 1], arr[:, 2], arr[:, 3]
  if np.any(st < 0):
    j = first_bad(st < 0)
    raise SubmissionError(f"{where}: field 'predictions[{j}].st' is negative ({float(st[j])})")
  if np.any(st > ed):
    j = first_bad(st > ed)
    raise SubmissionError(f"{where}: field 'predictions[{j}].st' {float(st[j])} > ed {float(ed[j])}")
  if np.any(np.diff(score) > 0):
    j = first_bad(np.diff(score) > 0) + 1
    raise SubmissionError(f"{where}: field 'predictions[{j}].score' {float(score[j])} is above the previous one "
                          f"({float(score[j - 1])}): predictions must be sorted best first")
  if task == "VR":
    if np.any((st != 0) | (ed != 0)):
      j = first_bad((st != 0) | (ed != 0))
      raise SubmissionError(f"{where}: field 'predictions[{j}].st/ed' must be 0, 0 for VR")
    _, first = np.unique(vid, return_index=True)
    if len(first) != len(vid):
      j = first_bad(~np.isin(np.arange(len(vid)), first))
      raise SubmissionError(f"{where}: field 'predictions[{j}].vid_idx' {int(vid[j])} repeats a video (VR)")
  if task == "SVMR" and np.any(vid != vid[0]):
    j = first_bad(vid != vid[0])
    raise SubmissionError(f"{where}: field 'predictions[{j}].vid_idx' {int(vid[j])} differs from the entry's "
                          f"video {int(vid[0])} (SVMR predicts inside one video)")


def validate_submission(obj: Any) -> None:
  """Raises SubmissionError (a ValueError) with a one-line message at the first problem."""
  if not isinstance(obj, dict):
    raise SubmissionError(f"submission: expected a JSON object, got {type(obj).__name__}")
  video2idx = obj.get("video2idx")
  if not isinstance(video2idx, dict):
    raise SubmissionError("submission: field 'video2idx' is missing or not an object")
  for name, idx in video2idx.items():
    if not _is_int(idx) or idx < 0:
      raise SubmissionError(f"submission: field 'video2idx[{name!r:.60}]' is not a non-negative integer: {idx!r:.40}")
  known = np.unique(np.asarray(list(video2idx.values()), np.float64))  # sorted, once per file
  if len(known) != len(video2idx):
    raise SubmissionError("submission: field 'video2idx' maps two videos to the same index")
  tasks = [t for t in TASKS if t in obj]
  if not tasks:
    raise SubmissionError(f"submission: none of the task fields {list(TASKS)} is present")
  for task in tasks:
    entries = obj[task]
    if not isinstance(entries, list):
      raise SubmissionError(f"submission: field '{task}' is not a list")
    seen = set()
    for i, entry in enumerate(entries):
      where = _where(task, i, entry)
      if not isinstance(entry, dict):
        raise SubmissionError(f"{where}: entry is not an object")
      for key in ("desc_id", "desc", "predictions"):
        if key not in entry:
          raise SubmissionError(f"{where}: missing key '{key}'")
      if not _is_int(entry["desc_id"]):
        raise SubmissionError(f"{where}: field 'desc_id' is not an integer")
      if entry["desc_id"] in seen:
        raise SubmissionError(f"{where}: field 'desc_id' repeats an earlier entry of {task}")
      seen.add(entry["desc_id"])
      if not isinstance(entry["desc"], str):
        raise SubmissionError(f"{where}: field 'desc' is not a string")
      if not isinstance(entry["predictions"], list):
        raise SubmissionError(f"{where}: field 'predictions' is not a list")
      _check_predictions(task, where, entry["predictions"], known)


def write_submission(path: str, obj: dict, *, validated: bool = False) -> None:
  """Validates (unless the caller just did), then writes compact JSON atomically (files.atomic_write)."""
  if not validated:
    validate_submission(obj)
  # allow_nan=False: NaN is not JSON (validation already refuses it).
  files.atomic_write(path, json.dumps(obj, allow_nan=False, separators=(",", ":")))


def load_submission(path: str, validate: bool = True) -> dict:
  """Reads a prediction file (and validates it unless `validate=False`)."""
  obj = json.loads(files.read_text(path))
  if validate:
    validate_submission(obj)
  return obj


__all__ = ["SubmissionError", "make_entry", "make_vr_entry", "make_submission", "validate_submission",
           "write_submission", "load_submission", "MAX_PREDICTIONS", "TASKS"]
