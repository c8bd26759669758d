"""Reading TVR and ActivityNet Captions annotations into `Query` lists.

Every problem that makes a record unusable is a `DataError` naming the file, the
record (line number and desc_id, or video id and sentence number) and the field.
Known anomalies of the real releases are repaired and counted in a `RepairLog`
(`repair_span`): a reversed `[st, ed]` is swapped, a negative `st` clamped to 0,
an `ed` past the video's duration clamped to it. A span with nothing inside
`[0, duration)` (both ends negative, or starting at or after the end) cannot be
repaired into a moment and its query is dropped, counted by reason.
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


SPAN_BEFORE_START = "span entirely before 0 s"
SPAN_AFTER_END = "span starts at or after the video's end"


def repair_span(st: float, ed: float, duration: float, log: RepairLog, record: str) -> tuple[float, float] | None:
  """`[st, ed]` ordered and inside `[0, duration]` with st < duration, each repair counted;
  None (the query is dropped, counted) when no part of the span lies in the video."""
  if st > ed:
    log.repair("reversed [st, ed] swapped", record)
    st, ed = ed, st
  if ed < 0:
    log.drop(SPAN_BEFORE_START, record)
    return None
  if st >= duration:
    log.drop(SPAN_AFTER_END, record)
    return None
  if st < 0:
    log.repair("negative st clamped to 0", record)
    st = 0.0
  if ed > duration:
    log.repair("ed past the duration clamped", record)
    ed = duration
  return st, ed


def read_lines(path: str):
  """(line number, text) of a UTF-8 text file; a byte that is not UTF-8 is one DataError naming its place."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise DataError(path, "<file>", "<file>", f"cannot read ({e.strerror or e})") from None
  with f:
    for line_no, raw in enumerate(f, start=1):
      try:
        yield line_no, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(path, f"line {line_no}", "<text>",
                        f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None


def _json_error(path: str, text: str, e: json.JSONDecodeError, line_no: int | None = None) -> DataError:
  """Where JSON parsing failed: line and column (in the file), and the text around it."""
  line = line_no if line_no is not None else e.lineno
  snippet = text[max(0, e.pos - 20):e.pos + 20].replace("\n", " ").strip()
  return DataError(path, f"line {line}", "<json>", f"malformed JSON ({e.msg} at column {e.colno}, near {snippet!r})")


def read_tvr_jsonl(path: str, log: RepairLog, *, with_ground_truth: bool) -> list[Query]:
  """Parses a TVR release jsonl.

  Args:
    with_ground_truth: train/val files (`vid_name`, `duration`, `ts`, `type`
      required); False for test files, which have only `desc` and `desc_id`.
  """
  queries: list[Query] = []
  seen: dict[int, int] = {}
  for line_no, line in read_lines(path):
    if not line.strip():
      continue
    where = f"line {line_no}"
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise _json_error(path, line, e, line_no) from None
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
      span = repair_span(st, ed, duration, log, f"{path} {where}")
      if span is None:
        continue
      q.st, q.ed = span
      q.vid_name, q.duration = rec["vid_name"], duration
      q.type = str(rec.get("type", ""))
      q.where = where
    queries.append(q)
  return queries


def read_activitynet_json(path: str, log: RepairLog) -> list[Query]:
  """Parses an ActivityNet Captions `{video_id: {duration, timestamps, sentences}}` file.

  desc_id is the running index of (video, sentence) in file order, which the
  official files keep stable; videos keep their order of appearance.
  """
  text = "".join(line for _, line in read_lines(path))
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise _json_error(path, text, e) from None
  if not isinstance(data, dict):
    raise DataError(path, "<top level>", "<json>", "expected an object {video_id: {...}}")
  queries: list[Query] = []
  next_id = 0
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
      # desc_id counts every sentence, dropped or not, so ids stay those of the official file order.
      desc_id = next_id
      next_id += 1
      span = repair_span(st, ed, duration, log, f"{path} {at}")
      if span is None:
        continue
      queries.append(Query(desc_id=desc_id, desc=sentence.strip(), vid_name=vid, st=span[0], ed=span[1],
                           duration=duration, where=at))
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
