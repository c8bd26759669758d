"""Subtitle lines for display: SRT, WebVTT or TVR's jsonl, read into `{vid_name: [{start, end, text}]}`.

Accepted (`python -m data_prep.corpus --subtitles=PATH`):
  * a folder of `<vid_name>.srt` / `<vid_name>.vtt` files (one per video; both for
    one video is refused), or one such file for the video its name gives;
  * TVR's `tvqa_preprocessed_subtitles.jsonl`: one `{"vid_name", "sub": [{"start",
    "end", "text"}]}` per line (seconds), the format `hammer_jax.retrieval.searcher.
    read_subtitles` reads back (`to_jsonl`).
Cue text is joined into one line, markup (`<i>`, `<v Name>`, `{\\an8}`) removed.
Every problem is a one-line DataError naming the file, the cue (or line) and the field.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any, Iterable

from data_prep import annotations
from data_prep.records import DataError

Lines = dict[str, list[dict[str, Any]]]
CUE_SUFFIXES = (".srt", ".vtt")
_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")  # [hh:]mm:ss,mmm (SRT) or .mmm (VTT)
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def _seconds(text: str, path: str, where: str) -> float:
  m = _TIME.match(text.strip())
  if not m:
    raise DataError(path, where, "timing", f"cannot read {text.strip()!r} as [hh:]mm:ss,mmm")
  h, mi, s, ms = m.groups()
  return int(h or 0) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def read_cue_file(path: str) -> list[dict[str, Any]]:
  """The cues of one `.srt` or `.vtt` file, in file order."""
  vtt = path.endswith(".vtt")
  blocks: list[tuple[int, list[str]]] = []  # (first line number, lines) of each blank-line-separated block
  current = None
  for n, line in annotations.read_lines(path):
    line = line.rstrip("\r\n")
    if not line.strip():
      current = None
      continue
    if current is None:
      current = (n, [])
      blocks.append(current)
    current[1].append(line)
  if vtt:
    if not blocks or not blocks[0][1][0].startswith("WEBVTT"):
      raise DataError(path, "line 1", "<header>", "a WebVTT file starts with 'WEBVTT'")
    blocks = [(n, b) for n, b in blocks[1:] if not b[0].startswith(("NOTE", "STYLE", "REGION"))]
  cues: list[dict[str, Any]] = []
  for n, block in blocks:
    timing = next((i for i, line in enumerate(block[:2]) if "-->" in line), None)
    where = f"cue {len(cues) + 1} (line {n})"
    if timing is None:
      if cues and not block[0].strip().isdigit():  # A blank line inside a cue's text: part of that cue.
        cues[-1]["text"] = (cues[-1]["text"] + " " + _clean(block)).strip()
        continue
      raise DataError(path, where, "timing", "no 'start --> end' line")
    start_text, end_text = block[timing].split("-->", 1)
    end_text = end_text.split()[0] if end_text.split() else ""  # WebVTT cue settings follow the end time
    start, end = _seconds(start_text, path, where), _seconds(end_text, path, where)
    if end < start:
      raise DataError(path, where, "timing", f"ends ({end:.3f} s) before it starts ({start:.3f} s)")
    text = _clean(block[timing + 1:])
    if text:
      cues.append({"start": start, "end": end, "text": text})
  return cues


def _clean(lines: Iterable[str]) -> str:
  return " ".join(" ".join(html.unescape(_MARKUP.sub("", line)).split()) for line in lines).strip()


def read_jsonl(path: str) -> Lines:
  """TVR's `tvqa_preprocessed_subtitles.jsonl`: `{"vid_name", "sub": [{"start", "end", "text"}]}` per line."""
  out: Lines = {}
  first: dict[str, int] = {}
  for n, line in annotations.read_lines(path):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise annotations.json_error(path, line, e, n, unit="line") from None
    name = rec.get("vid_name") if isinstance(rec, dict) else None
    if not isinstance(name, str) or not name:
      raise DataError(path, f"line {n}", "vid_name", "missing, empty or not a string")
    where = f"line {n} (video {name})"
    if name in first:
      raise DataError(path, where, "vid_name", f"duplicate video, first on line {first[name]}")
    first[name] = n
    if not isinstance(rec.get("sub"), list):
      raise DataError(path, where, "sub", "expected a list of {start, end, text}")
    cues = []
    for j, cue in enumerate(rec["sub"]):
      at = f"{where} sub {j}"
      if not isinstance(cue, dict) or not isinstance(cue.get("text"), str):
        raise DataError(path, at, "text", "expected {start, end, text} with a string text")
      start = annotations.number(cue.get("start"), path, at, "start")
      end = annotations.number(cue.get("end"), path, at, "end")
      if end < start or start < 0:
        raise DataError(path, at, "end", f"[{start}, {end}] is not a span of seconds")
      cues.append({"start": start, "end": end, "text": cue["text"].strip()})
    out[name] = cues
  return out


def read_subtitle_lines(path: str) -> tuple[Lines, list[str]]:
  """({vid_name: cues}, the files read) of a folder of .srt/.vtt files, one such file, or a TVR jsonl."""
  if os.path.isdir(path):
    chosen: dict[str, str] = {}
    for f in sorted(os.listdir(path)):
      if f.endswith(CUE_SUFFIXES):
        name = f[:-4]
        if name in chosen:
          raise DataError(os.path.join(path, f), f"video {name}", "subtitles",
                          f"both {os.path.basename(chosen[name])} and {f} are in the folder: keep one per video")
        chosen[name] = os.path.join(path, f)
    if not chosen:
      raise DataError(path, "<folder>", "subtitles", "no <video name>.srt or .vtt file in the folder")
    return {name: read_cue_file(f) for name, f in chosen.items()}, sorted(chosen.values())
  if not os.path.isfile(path):
    raise DataError(path, "<file>", "subtitles", "subtitle file or folder does not exist")
  if path.endswith(CUE_SUFFIXES):
    return {os.path.basename(path)[:-4]: read_cue_file(path)}, [path]
  return read_jsonl(path), [path]


def to_jsonl(lines: Lines, names: Iterable[str]) -> str:
  """The TVR jsonl of `names`' lines (videos without lines left out), in `names` order."""
  return "".join(json.dumps({"vid_name": n, "sub": [{"start": round(c["start"], 3), "end": round(c["end"], 3),
                                                      "text": c["text"]} for c in lines[n]]}) + "\n"
                 for n in names if lines.get(n))

