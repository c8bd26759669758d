"""Reading TVR and ActivityNet Captions annotations into `Query` lists.

Every problem that makes a record unusable is a `DataError` naming the file, the
record (line number and desc_id, or video id and sentence number) and the field.
Known anomalies of the real releases are repaired and counted in a `RepairLog`:
reversed `[st, ed]`, `ed` (or `st`) past the video's duration, negative times.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import numpy as np

from data_prep.records import DataError, Query, RepairLog


def annotation_files(annotation_dir: str, split_files: dict[str, str] | None,
                     names: dict[str, str]) -> dict[str, str]:
  """{split: file}: the given `split_files`, plus `annotation_dir/names[split]` for the others that exist."""
  files = dict(split_files or {})
  if annotation_dir:
    for split, name in names.items():
      if split not in files and os.path.exists(os.path.join(annotation_dir, name)):
        files[split] = os.path.join(annotation_dir, name)
  if not files:
    raise DataError(annotation_dir or "<flags>", "<folder>", "annotations",
                    f"no annotation file found (expected one of {', '.join(names.values())})")
  return files


def _number(value: Any, path: str, record: str, field: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise DataError(path, record, field, f"expected a finite number, got {value!r}")
  return float(value)


def repair_span(st: float, ed: float, duration: float, log: RepairLog, record: str) -> tuple[float, float]:
  """Returns `[st, ed]` ordered and inside `[0, duration]`, counting each repair."""
  if st > ed:
    log.repair("reversed [st, ed] swapped", record)
    st, ed = ed, st
  if st < 0:
    log.repair("negative st clamped to 0", record)
    st = 0.0
  if ed > duration:
    log.repair("ed past the duration clamped", record)
    ed = duration
  if st > duration:
    log.repair("st past the duration clamped", record)
    st = duration
  return st, ed


def read_tvr_jsonl(path: str, log: RepairLog, *, with_ground_truth: bool) -> list[Query]:
  """Parses a TVR release jsonl.

  Args:
    with_ground_truth: train/val files (`vid_name`, `duration`, `ts`, `type`
      required); False for test files, which have only `desc` and `desc_id`.
  """
  queries: list[Query] = []
  seen: dict[int, int] = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"line {line_no}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(path, where, "<json>", f"malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(rec, dict):
        raise DataError(path, where, "<json>", "expected a JSON object")
      if "desc_id" not in rec:
        raise DataError(path, where, "desc_id", "missing")
      desc_id = rec["desc_id"]
      if isinstance(desc_id, bool) or not isinstance(desc_id, int):
        raise DataError(path, where, "desc_id", f"expected an integer, got {desc_id!r}")
      where = f"line {line_no} (desc_id {desc_id})"
      if desc_id in seen:
        raise DataError(path, where, "desc_id", f"duplicate desc_id, first seen on line {seen[desc_id]}")
      seen[desc_id] = line_no
      desc = rec.get("desc")
      if not isinstance(desc, str) or not desc.strip():
        raise DataError(path, where, "desc", "empty or missing description")
      q = Query(desc_id=desc_id, desc=desc.strip())
      if with_ground_truth:
        for key in ("vid_name", "duration", "ts"):
          if key not in rec:
            raise DataError(path, where, key, "missing")
        if not isinstance(rec["vid_name"], str) or not rec["vid_name"]:
          raise DataError(path, where, "vid_name", "empty or not a string")
        duration = _number(rec["duration"], path, where, "duration")
        if duration <= 0:
          raise DataError(path, where, "duration", f"must be positive, got {duration}")
        ts = rec["ts"]
        if not isinstance(ts, list) or len(ts) != 2:
          raise DataError(path, where, "ts", f"expected [st, ed], got {ts!r}")
        st, ed = (_number(t, path, where, "ts") for t in ts)
        q.st, q.ed = repair_span(st, ed, duration, log, f"{path} {where}")
        q.vid_name, q.duration = rec["vid_name"], duration
        q.type = str(rec.get("type", ""))
      queries.append(q)
  return queries


def read_activitynet_json(path: str, log: RepairLog) -> list[Query]:
  """Parses an ActivityNet Captions `{video_id: {duration, timestamps, sentences}}` file.

  desc_id is the running index of (video, sentence) in file order, which the
  official files keep stable; videos keep their order of appearance.
  """
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, f"line {e.lineno}", "<json>", f"malformed JSON ({e.msg})") from None
  if not isinstance(data, dict):
    raise DataError(path, "<top level>", "<json>", "expected an object {video_id: {...}}")
  queries: list[Query] = []
  for vid, rec in data.items():
    where = f"video {vid}"
    if not isinstance(rec, dict):
      raise DataError(path, where, "<json>", "expected an object")
    for key in ("duration", "timestamps", "sentences"):
      if key not in rec:
        raise DataError(path, where, key, "missing")
    duration = _number(rec["duration"], path, where, "duration")
    if duration <= 0:
      raise DataError(path, where, "duration", f"must be positive, got {duration}")
    stamps, sentences = rec["timestamps"], rec["sentences"]
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
      raise DataError(path, where, "timestamps", "timestamps and sentences differ in length")
    for j, (ts, sentence) in enumerate(zip(stamps, sentences)):
      at = f"video {vid} sentence {j}"
      if not isinstance(sentence, str) or not sentence.strip():
        raise DataError(path, at, "sentences", "empty description")
      if not isinstance(ts, list) or len(ts) != 2:
        raise DataError(path, at, "timestamps", f"expected [st, ed], got {ts!r}")
      st, ed = (_number(t, path, at, "timestamps") for t in ts)
      st, ed = repair_span(st, ed, duration, log, f"{path} {at}")
      queries.append(Query(desc_id=len(queries), desc=sentence.strip(), vid_name=vid,
                           st=st, ed=ed, duration=duration))
  return queries


def tokenize_queries(queries: Iterable[Query], tokenizer, max_len: int, batch: int = 4096) -> None:
  """Fills `token_ids` ([CLS] ... [SEP], truncated to max_len) in place, in batches for speed."""
  queries = list(queries)
  for i in range(0, len(queries), batch):
    chunk = queries[i:i + batch]
    enc = tokenizer([q.desc for q in chunk], truncation=True, max_length=max_len,
                    add_special_tokens=True)["input_ids"]
    for q, ids in zip(chunk, enc):
      q.token_ids = np.asarray(ids, np.int32)
