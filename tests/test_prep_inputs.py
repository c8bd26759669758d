"""Inputs that used to crash with a traceback or pass without a word.

Each case is now an error (one line naming the file, the record and the field,
or the flag), a counted drop or repair in the summary, or a stated rule:

  error    desc_id beyond int64; a non-number in tvr_video2dur_idx.json; --max_frames,
           --videos_per_shard < 1, --max_query_len < 3; an empty or blank file, or a split whose
           every query was dropped (a 0-video split cannot be read back); a dangling or looping
           symlink for an annotation file; a train video in an evaluation split
  dropped  descriptions with no token the vocabulary knows (zero-width spaces, emoji only)
  repaired descriptions cut at max_query_len (counted; the cut is applied for ActivityNet too)
  noted    all-zero visual rows (kept: padding and black frames are valid input)
  rule     a UTF-8 byte-order mark is ignored; malformed JSON is reported where the text stops
           making sense (not column 1 of the next line); a duration conflict names the
           annotation record, with the other side in the message
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers as dh
from data_prep import annotations, records, tvr
from data_prep.records import DataError
from helpers import REPO_ROOT
from prep_helpers import AnetInputs, assert_data_error, assert_one_line, run_cli


@pytest.fixture
def inp(tmp_path):
  return dh.TvrInputs(str(tmp_path / "in"))


def _prepare(tmp_path, inputs, **kw):
  return tvr.prepare_tvr(str(tmp_path / "out"), **inputs.kwargs(**kw))


def _tokenizer():
  from hammer_jax.model import pretrained
  return pretrained.load_tokenizer(pretrained.resolve_checkpoint_dir(need_weights=False))


# -- tracebacks that are one line now ----------------------------------------------------

def test_desc_id_beyond_int64(tmp_path, inp):
  inp.queries[2]["desc_id"] = 2**70
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 3", "desc_id", str(2**70), "int64")
  line = run_cli(lambda: _prepare(tmp_path, inp), str(tmp_path / "out"))
  assert inp.jsonl in line and "int64" in line


@pytest.mark.parametrize("duration", ["n/a", "9.0", None, 1e400])
def test_video2dur_entry_that_is_not_a_number(tmp_path, inp, duration):
  idx = dh.write_json(str(tmp_path / "video2dur.json"), {"val": {n: [d, i] for i, (n, d) in enumerate(
      zip(inp.names, inp.durations))}})
  raw = open(idx).read().replace(f"[{inp.durations[1]}, 1]", f"[{json.dumps(duration)}, 1]" if duration != 1e400
                                 else "[1" + "0" * 400 + ", 1]")
  open(idx, "w").write(raw)
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp, video2dur_idx=idx)
  assert_data_error(e, idx, f"val video {inp.names[1]}", "duration", "expected a finite number")


@pytest.mark.parametrize("module,flag", [("data_prep.activitynet", "max_frames"),
                                         ("data_prep.tvr", "videos_per_shard")])
def test_zero_in_a_count_flag_is_one_error_line(tmp_path, inp, module, flag):
  if module == "data_prep.tvr":
    inputs = [f"--val_file={inp.jsonl}", f"--video_feature={inp.video_h5}"]
  else:
    anet = AnetInputs(str(tmp_path / "anet"))
    inputs = [f"--val_1_file={anet.paths['val_1']}", f"--video_feature={anet.h5}"]
  out = str(tmp_path / "out")
  p = subprocess.run([sys.executable, "-m", module, f"--out_dir={out}", *inputs, f"--{flag}=0"], cwd=REPO_ROOT,
                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert_one_line(last, f"error: --{flag}=0: must be at least 1")
  assert not os.path.exists(out)


# -- empty splits, symlinks, train videos evaluated ----------------------------------------

@pytest.mark.parametrize("text", ["", "\n  \n\n"], ids=["empty", "blank"])
def test_empty_or_blank_annotation_file(tmp_path, inp, text):
  open(inp.jsonl, "w").write(text)
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "<file>", "<records>", "split val has no query", "leave the split out")
  anet = AnetInputs(str(tmp_path / "anet"))
  open(anet.paths["val_1"], "w").write(text)
  with pytest.raises(DataError) as e:
    anet.prepare(str(tmp_path / "anet_out"))
  assert_data_error(e, anet.paths["val_1"], "<file>", "<json>", "empty or blank")
  open(anet.paths["val_1"], "w").write("{}")
  with pytest.raises(DataError) as e:
    anet.prepare(str(tmp_path / "anet_out"))
  assert_data_error(e, anet.paths["val_1"], "<file>", "<records>", "split val_1 has no query")


def test_split_whose_every_query_was_dropped(tmp_path, inp):
  for q in inp.queries:
    q["ts"] = [-4.0, -1.0]
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "<file>", "<records>", "every query of split val was dropped",
                    "8 span entirely before 0 s")
  fresh = dh.TvrInputs(str(tmp_path / "in2"))
  dh.write_h5(fresh.video_h5, {"someone_else": fresh.video[fresh.names[0]]})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, fresh, missing_videos="drop")
  assert_data_error(e, fresh.jsonl, "<file>", "<records>", "4 video missing from the feature file")


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_annotation_file_that_is_a_broken_symlink(tmp_path, link):
  """Before: the split was skipped without a word (the run prepared train only)."""
  folder = tmp_path / "ann"
  train = dh.TvrInputs(str(folder), prefix="other_s02e03_seg01_clip_")
  os.rename(train.jsonl, folder / "tvr_train_release.jsonl")
  val = str(folder / "tvr_val_release.jsonl")
  os.symlink(str(folder / "gone.jsonl") if link == "dangling" else val, val)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), annotation_dir=str(folder), video_feature=[train.video_h5])
  assert_data_error(e, val, "<file>", "<file>", "loops" if link == "loop" else "gone.jsonl", "fix the link")


def test_a_train_video_in_an_evaluation_split(tmp_path, inp):
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=100)
  train.queries[3]["vid_name"] = inp.names[2]
  train.queries[3]["duration"] = inp.durations[2]
  train.queries[3]["ts"] = [1.0, 2.0]
  train.write()
  dh.write_h5(inp.video_h5, {**train.video, **inp.video})
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), split_files={"train": train.jsonl, "val": inp.jsonl},
                    video_feature=[inp.video_h5])
  assert_data_error(e, inp.jsonl, f"video {inp.names[2]}", "vid_name", "also in the train split", train.jsonl)


def test_activitynet_evaluation_splits_may_share_videos_but_not_with_train(tmp_path):
  anet = AnetInputs(str(tmp_path / "in"), splits=("train", "val_1"))
  dh.write_json(str(tmp_path / "in" / "val_2.json"), anet.ann["val_1"])  # val_2 annotates val_1's videos
  m = anet.prepare(str(tmp_path / "out"), split_files={**anet.paths, "val_2": str(tmp_path / "in" / "val_2.json")})
  assert m["splits"]["val_2"]["video_names"] == m["splits"]["val_1"]["video_names"]
  leaked = sorted(anet.ann["train"])[0]
  dh.write_json(anet.paths["val_1"], {**anet.ann["val_1"], leaked: anet.ann["train"][leaked]})
  with pytest.raises(DataError) as e:
    anet.prepare(str(tmp_path / "out2"))
  assert_data_error(e, anet.paths["val_1"], f"video {leaked}", "vid_name", "also in the train split")


# -- counted: no real token, cut descriptions, zero rows ------------------------------------

def test_descriptions_without_a_known_token_are_dropped_and_counted(tmp_path, inp):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp.queries[1]["desc"] = "\u200b\u200b \u200b"
  inp.queries[4]["desc"] = "\U0001F600\U0001F44D"
  inp.write()
  m = _prepare(tmp_path, inp)
  info = m["splits"]["val"]
  assert info["dropped"] == {annotations.NO_KNOWN_TOKEN: 2}
  assert info["num_queries"] == 6 and info["examples"][annotations.NO_KNOWN_TOKEN][0].endswith("line 2 (desc_id 1)")
  assert sorted(read_queries(open_prepared(str(tmp_path / "out")), "val").desc_id.tolist()) == [0, 2, 3, 5, 6, 7]


def test_descriptions_cut_at_max_query_len_are_counted(tmp_path, inp):
  tok = _tokenizer()
  lengths = [len(tok(q["desc"])["input_ids"]) for q in inp.queries]
  assert min(lengths) > 12 > 6
  m = _prepare(tmp_path, inp, max_query_len=12)
  assert m["splits"]["val"]["repaired"]["description cut at max_query_len=12 tokens"] == 8
  assert _prepare(tmp_path, inp, max_query_len=64)["splits"]["val"]["repaired"].get(
      "description cut at max_query_len=64 tokens", 0) == 0


@pytest.mark.parametrize("max_query_len", [3, 5])
def test_activitynet_applies_max_query_len(tmp_path, max_query_len):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  anet = AnetInputs(str(tmp_path / "in"))
  tok = _tokenizer()
  sentences = [s.strip() for rec in anet.ann["val_1"].values() for s in rec["sentences"]]
  full = [tok(s)["input_ids"] for s in sentences]
  out = str(tmp_path / "out")
  m = anet.prepare(out, max_query_len=max_query_len)
  cut = sum(len(ids) > max_query_len for ids in full)
  assert cut == len(sentences)
  assert m["splits"]["val_1"]["repaired"][f"description cut at max_query_len={max_query_len} tokens"] == cut
  data = open_prepared(out)
  stored = read_queries(data, "val_1").token_ids
  assert [t.tolist() for t in stored] == [ids[:max_query_len - 1] + ids[-1:] for ids in full]
  for rec in data.builder("videos").as_dataset(split="val_1").as_numpy_iterator():
    assert max(len(t) for t in rec["queries"]["token_ids"]) == max_query_len
  with pytest.raises(DataError) as e:
    anet.prepare(str(tmp_path / "out2"), max_query_len=2)
  assert_one_line(str(e.value), "--max_query_len=2", "at least 3")


def test_all_zero_feature_rows_are_kept_and_counted(tmp_path, inp):
  from hammer_jax.data.prepared_data import open_prepared
  from data_prep.prepared_writer import format_summary
  some, every = inp.names[1], inp.names[3]
  inp.video[some] = inp.video[some].copy()
  inp.video[some][[0, 4]] = 0.0
  inp.video[every] = np.zeros_like(inp.video[every])
  inp.write()
  m = _prepare(tmp_path, inp, videos_per_shard=2)
  noted = m["splits"]["val"]["noted"]
  assert noted == {records.ZERO_ROWS: 1, records.ALL_ZERO: 1}
  assert m["splits"]["val"]["examples"][records.ZERO_ROWS] == [f"{some} (2 of {len(inp.video[some])} rows)"]
  assert f"noted      1  {records.ALL_ZERO}  (e.g. {every})" in format_summary(m)
  for rec in open_prepared(str(tmp_path / "out")).builder("videos").as_dataset(split="val").as_numpy_iterator():
    np.testing.assert_array_equal(rec["video"], inp.video[rec["vid_name"].decode()])


# -- where a problem is reported ------------------------------------------------------------

def test_malformed_json_is_reported_where_the_text_stops_making_sense(tmp_path, inp):
  # ActivityNet, pretty-printed: a comma missing at the end of line `bad`; JSON notices it on the next line.
  lines = json.dumps(dh.anet_annotations(), indent=2).splitlines()
  bad = next(i for i, line in enumerate(lines) if line.strip().startswith('"duration"'))
  lines[bad] = lines[bad].rstrip(",")
  path = str(tmp_path / "val_1.json")
  open(path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(DataError) as e:
    annotations.read_activitynet_json(path, records.RepairLog())
  assert_data_error(e, path, f"line {bad + 1}", "<json>", f"at column {len(lines[bad]) + 1}")
  # A file cut short: the end of its last line, not column 1 of a line after it.
  open(path, "w").write("\n".join(lines[:bad + 1]) + "\n")
  with pytest.raises(DataError) as e:
    annotations.read_activitynet_json(path, records.RepairLog())
  assert_data_error(e, path, f"line {bad + 1}", "<json>", "end of the file")
  # TVR: the last record cut mid-way (a download that stopped).
  cut = json.dumps(inp.queries[-1])[:30].rstrip(" ,") + ","
  inp.write(raw_lines={len(inp.queries): cut})
  with pytest.raises(DataError) as e:
    annotations.read_tvr_jsonl(inp.jsonl, records.RepairLog(), with_ground_truth=True)
  assert_data_error(e, inp.jsonl, f"line {len(inp.queries) + 1}", "<json>", f"at column {len(cut) + 1}",
                    "end of the line")


def test_byte_order_mark_is_ignored(tmp_path, inp):
  text = open(inp.jsonl, encoding="utf-8").read()
  open(inp.jsonl, "w", encoding="utf-8-sig").write(text)
  assert open(inp.jsonl, "rb").read(3) == b"\xef\xbb\xbf"
  assert _prepare(tmp_path, inp)["splits"]["val"]["num_queries"] == 8


def test_duration_conflict_names_the_annotation_file(tmp_path, inp):
  idx = dh.write_json(str(tmp_path / "video2dur.json"), {"val": {n: [d, i] for i, (n, d) in enumerate(
      zip(inp.names, inp.durations))}})
  inp.queries[1]["duration"] = inp.queries[0]["duration"] * 10  # Lines 1 and 2 disagree.
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp, video2dur_idx=idx)
  assert_data_error(e, inp.jsonl, "line 2", "duration", "90.0 s", "line 1", "9.0 s")
  inp.queries[1]["duration"] = inp.queries[0]["duration"]
  inp.write()
  dh.write_json(idx, {"val": {n: [d + (5.0 if i == 0 else 0.0), i] for i, (n, d) in enumerate(
      zip(inp.names, inp.durations))}})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp, video2dur_idx=idx)
  assert_data_error(e, inp.jsonl, "line 1", "duration", "9.0 s", idx, "14.0 s")
