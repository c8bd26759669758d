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

import codecs
import errno
import json
import math
import os
from typing import Any, Iterable

import numpy as np

from data_prep.records import INT64_MAX, INT64_MIN, DataError, Query, RepairLog, VideoEntry


def annotation_files(annotation_dir: str, split_files: dict[str, str] | None,
                     names: dict[str, str]) -> dict[str, str]:
  """{split: file}: the given `split_files`, plus `annotation_dir/names[split]` for the others that exist."""
  files = dict(split_files or {})
  if annotation_dir:
    for split, name in names.items():
      # lexists: a broken link is a file the user meant to give, not a split left out.
      if split not in files and os.path.lexists(os.path.join(annotation_dir, name)):
        files[split] = os.path.join(annotation_dir, name)
  if not files:
    raise DataError(annotation_dir or "<flags>", "<folder>", "annotations",
                    f"no annotation file found (expected one of {', '.join(names.values())})")
  for path in files.values():
    _check_readable(path)
  return files


def _check_readable(path: str) -> None:
  """A dangling or looping symlink, or a missing file, is one line naming the link and its target."""
  try:
    os.stat(path)
  except OSError as e:
    if os.path.islink(path):
      target = os.readlink(path)
      problem = ("is a symlink that loops" if e.errno == errno.ELOOP
                 else f"is a symlink to {target}, which does not exist")
      raise DataError(path, "<file>", "<file>", f"{problem}: fix the link or give the file itself") from None
    raise DataError(path, "<file>", "<file>", f"cannot read ({e.strerror or e})") from None


def number(value: Any, path: str, record: str, field: str) -> float:
  """A finite JSON number; a string ("12.5") is refused like any other non-number."""
  try:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
  except OverflowError:  # An integer beyond float range.
    ok = False
  if not ok:
    shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
    raise DataError(path, record, field, f"expected a finite number, got {shown}")
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
      if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]  # Rule: a UTF-8 byte-order mark (Windows editors write one) is ignored.
      try:
        yield line_no, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(path, f"line {line_no}", "<text>",
                        f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None


def json_error(path: str, text: str, e: json.JSONDecodeError, first_line: int = 1,
               unit: str = "file") -> DataError:
  """Where JSON parsing of `text` (the whole file, or one `unit="line"` at line `first_line` of `path`)
  failed: line, column, nearby text.

  JSON reports an expected token where the next one starts; when line breaks lie
  between (a missing comma at a line's end, a file cut short), that is column 1 of
  a later line, or past the end. The place reported is then right after the last
  token, where the text actually stops making sense.
  """
  pos = e.pos
  before = text[:pos]
  if e.msg.startswith("Expecting") and "\n" in before[len(before.rstrip()):]:
    pos = len(before.rstrip())
  line = first_line + text.count("\n", 0, pos)
  column = pos - (text.rfind("\n", 0, pos) + 1) + 1
  snippet = text[max(0, pos - 20):pos + 20].replace("\n", " ").strip()
  msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
  where = f" (end of the {unit})" if not text[pos:].strip() else ""
  return DataError(path, f"line {line}", "<json>",
                   f"malformed JSON ({msg} at column {column}{where}, near {snippet!r})")


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
      raise json_error(path, line, e, line_no, unit="line") from None
    if not isinstance(rec, dict):
      raise DataError(path, where, "<json>", "expected a JSON object")
    if "desc_id" not in rec:
      raise DataError(path, where, "desc_id", "missing")
    desc_id = rec["desc_id"]
    if isinstance(desc_id, bool) or not isinstance(desc_id, int):
      raise DataError(path, where, "desc_id", f"expected an integer, got {desc_id!r}")
    if not INT64_MIN <= desc_id <= INT64_MAX:
      raise DataError(path, where, "desc_id", f"{desc_id} does not fit in int64 (prepared data stores desc_id "
                      "as int64): renumber the queries")
    where = f"line {line_no} (desc_id {desc_id})"
    if desc_id in seen:
      raise DataError(path, where, "desc_id", f"duplicate desc_id, first seen on line {seen[desc_id]}")
    seen[desc_id] = line_no
    desc = rec.get("desc")
    if not isinstance(desc, str) or not desc.strip():
      raise DataError(path, where, "desc", "empty or missing description")
    q = Query(desc_id=desc_id, desc=desc.strip(), where=where)
    if with_ground_truth:
      for key in ("vid_name", "duration", "ts"):
        if key not in rec:
          raise DataError(path, where, key, "missing")
      if not isinstance(rec["vid_name"], str) or not rec["vid_name"]:
        raise DataError(path, where, "vid_name", "empty or not a string")
      duration = number(rec["duration"], path, where, "duration")
      if duration <= 0:
        raise DataError(path, where, "duration", f"must be positive, got {duration}")
      ts = rec["ts"]
      if not isinstance(ts, list) or len(ts) != 2:
        raise DataError(path, where, "ts", f"expected [st, ed], got {ts!r}")
      st, ed = (number(t, path, where, "ts") for t in ts)
      span = repair_span(st, ed, duration, log, f"{path} {where}")
      if span is None:
        continue
      q.st, q.ed = span
      q.vid_name, q.duration = rec["vid_name"], duration
      q.type = str(rec.get("type", ""))
    queries.append(q)
  return queries


def read_activitynet_json(path: str, log: RepairLog) -> list[Query]:
  """Parses an ActivityNet Captions `{video_id: {duration, timestamps, sentences}}` file.

  desc_id is the running index of (video, sentence) in file order, which the
  official files keep stable; videos keep their order of appearance.
  """
  text = "".join(line for _, line in read_lines(path))
  if not text.strip():
    raise DataError(path, "<file>", "<json>", "the file is empty or blank: give the release file, or leave the "
                    "split out")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise json_error(path, text, e) from None
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
    duration = number(rec["duration"], path, where, "duration")
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
      st, ed = (number(t, path, at, "timestamps") for t in ts)
      # desc_id counts every sentence, dropped or not, so ids stay those of the official file order.
      desc_id = next_id
      next_id += 1
      span = repair_span(st, ed, duration, log, f"{path} {at}")
      if span is None:
        continue
      queries.append(Query(desc_id=desc_id, desc=sentence.strip(), vid_name=vid, st=span[0], ed=span[1],
                           duration=duration, where=at))
  return queries


NO_KNOWN_TOKEN = "description without a token the vocabulary knows (empty or only [UNK] after tokenisation)"


def tokenize_queries(queries: Iterable[Query], tokenizer, max_len: int, log: RepairLog, path: str,
                     batch: int = 4096) -> list[Query]:
  """Fills `token_ids` ([CLS] ... [SEP], at most max_len) in place; returns the queries kept.

  A description longer than max_len tokens is cut (its last tokens go, [SEP]
  stays) and counted. A description that leaves no token but [CLS], [SEP] and
  [UNK] (zero-width spaces, emoji only) is dropped and counted: nothing in it
  can match a moment.
  """
  queries = list(queries)
  special = set(tokenizer.all_special_ids)
  kept = []
  for i in range(0, len(queries), batch):
    chunk = queries[i:i + batch]
    enc = tokenizer([q.desc for q in chunk], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    for q, ids in zip(chunk, enc):
      if all(t in special for t in ids):
        log.drop(NO_KNOWN_TOKEN, f"{path} {q.where}")
        continue
      if len(ids) > max_len:
        log.repair(f"description cut at max_query_len={max_len} tokens", f"{path} {q.where}")
        ids = ids[:max_len - 1] + ids[-1:]
      q.token_ids = np.asarray(ids, np.int32)
      kept.append(q)
  return kept


def require_queries(split: str, path: str, queries: list[Query], entries: list[VideoEntry], log: RepairLog) -> None:
  """A split with no query or no video cannot be read back: refused, saying whether the file was empty."""
  if queries and entries:
    return
  dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(log.dropped.items()))
  problem = (f"every query of split {split} was dropped ({dropped})" if dropped
             else f"split {split} has no query (the file is empty, blank or holds no record)")
  raise DataError(path, "<file>", "<records>", f"{problem}: nothing to prepare for it; fix the file or leave the "
                  "split out")


def check_train_videos_not_evaluated(videos: dict[str, tuple[str, list[str]]]) -> None:
  """No video of the train split is in another split ({split: (file, video names)}): it would be
  evaluated on what it was trained on. Evaluation splits may share videos (ActivityNet's val_1 and
  val_2 annotate the same videos twice)."""
  if "train" not in videos:
    return
  train_path, train_names = videos["train"]
  train = set(train_names)
  for split, (path, names) in videos.items():
    shared = [n for n in names if n in train] if split != "train" else []
    if shared:
      raise DataError(path, f"video {shared[0]}", "vid_name",
                      f"{len(shared)} video(s) of split {split} are also in the train split ({train_path}): a "
                      "video trained on must not be evaluated; remove them from one of the files")
