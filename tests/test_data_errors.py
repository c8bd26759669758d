"""Bad input gets a one-line error naming the file, the record and the field.

Elsewhere: damaged shards and unprepared folders (test_prepared_reading.py),
interruptions and re-runs (test_prep_reruns.py), inputs that used to pass
silently and flags that crashed (test_prep_inputs.py), two runs at once
(test_prep_concurrency.py).

Inputs are tiny TVR-layout corpora (`helpers.TvrInputs`: a jsonl, a 6-wide
video h5 and a 5-wide subtitle h5 with `-mask` keys) and tiny ActivityNet files,
written into tmp_path.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers as dh
from data_prep import activitynet, tvr
from data_prep.records import DataError
from prep_helpers import assert_data_error, assert_one_line, no_manifest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def inp(tmp_path):
  return dh.TvrInputs(str(tmp_path / "in"))


def _prepare(tmp_path, inputs, out="out", **kw):
  return tvr.prepare_tvr(str(tmp_path / out), **inputs.kwargs(**kw))


# -- TVR: features --------------------------------------------------------------

def test_video_missing_from_the_feature_file(tmp_path, inp):
  name = inp.names[2]
  del inp.video[name]
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.video_h5, name, "video", "missing")
  assert no_manifest(str(tmp_path / "out"))


@pytest.mark.parametrize("stream", ["video", "subtitle"])
def test_feature_width_differs_from_the_others(tmp_path, inp, stream):
  name = inp.names[1]
  rows = dh.tvr_rows(inp.durations[1])
  if stream == "video":
    inp.video[name] = dh.feature_rows(name, rows, inp.VIDEO_DIM + 1)
  else:
    inp.sub[name] = dh.feature_rows(name, rows, inp.SUB_DIM - 1)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  path = inp.video_h5 if stream == "video" else inp.sub_h5
  width = inp.VIDEO_DIM + 1 if stream == "video" else inp.SUB_DIM - 1
  assert_data_error(e, path, name, stream, f"width {width}")


@pytest.mark.parametrize("stream", ["video", "subtitle"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_features(tmp_path, inp, stream, bad):
  name = inp.names[3]
  arrays = inp.video if stream == "video" else inp.sub
  arrays[name] = arrays[name].copy()
  arrays[name][2, 1] = bad
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp, videos_per_shard=2)
  path = inp.video_h5 if stream == "video" else inp.sub_h5
  assert_data_error(e, path, name, stream, "NaN or Inf", "row 2")
  assert no_manifest(str(tmp_path / "out"))


def test_video_of_zero_frames(tmp_path, inp):
  name = inp.names[0]
  inp.video[name] = np.zeros((0, inp.VIDEO_DIM), np.float32)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.video_h5, name, "video", "zero frames")


@pytest.mark.parametrize("what", ["absent", "not_h5"])
def test_unreadable_feature_file(tmp_path, inp, what):
  path = str(tmp_path / "nowhere.h5") if what == "absent" else inp.jsonl
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), split_files={"val": inp.jsonl}, video_feature=[path],
                    subtitle_feature=inp.sub_h5)
  assert_data_error(e, path, "<file>", "video")


@pytest.mark.parametrize("problem", ["width", "nan", "zero_rows"])
def test_npy_feature_folder_problems(tmp_path, problem):
  ann = dh.anet_annotations()
  path = dh.write_json(str(tmp_path / "val_1.json"), ann)
  folder = tmp_path / "npy"
  folder.mkdir()
  feats = dh.anet_features(ann)
  name = "v_anet001"
  if problem == "width":
    feats[name] = dh.feature_rows(name, 12, 5)
  elif problem == "nan":
    feats[name][3, 0] = np.nan
  else:
    feats[name] = np.zeros((0, 4), np.float32)
  for v, a in feats.items():
    np.save(folder / f"{v}.npy", a)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, str(folder))
  assert_data_error(e, str(folder), name, "video",
                     {"width": "width 5", "nan": "row 3", "zero_rows": "zero frames"}[problem])


# -- TVR: annotations -----------------------------------------------------------

def test_duplicate_desc_id_within_a_file(tmp_path, inp):
  inp.queries[4]["desc_id"] = inp.queries[1]["desc_id"]  # Lines 5 and 2.
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 5", "desc_id", "desc_id 1", "line 2", "duplicate")


def test_duplicate_desc_id_across_train_and_val(tmp_path, inp):
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=5)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), split_files={"train": train.jsonl, "val": inp.jsonl},
                    video_feature=[inp.video_h5], subtitle_feature=inp.sub_h5)
  # val's desc_id 5 (its 6th line) is also in train.
  assert_data_error(e, inp.jsonl, "desc_id 5", "desc_id", train.jsonl, "duplicate")


def test_malformed_json_line(tmp_path, inp):
  inp.write(raw_lines={2: '{"vid_name": "show_s01e01_seg02_clip_00", "desc_id": 99, "ts": [1.0, '})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 3", "<json>", "malformed JSON")


@pytest.mark.parametrize("desc", ["", "   ", None])
def test_empty_description(tmp_path, inp, desc):
  if desc is None:
    del inp.queries[2]["desc"]
  else:
    inp.queries[2]["desc"] = desc
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 3", "desc", "desc_id 2")


def test_missing_ts(tmp_path, inp):
  del inp.queries[1]["ts"]
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 2", "ts", "desc_id 1", "missing")


def test_spans_are_repaired_or_dropped_never_inverted(tmp_path, inp):
  """Each repair and drop kind, counted; no stored span ends before it starts or lies outside the video."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  d = [q["duration"] for q in inp.queries]
  cases = {0: [-5.0, -2.0],             # entirely before 0 s: dropped
           1: [d[1] + 1.0, d[1] + 4.0],  # starts after the end: dropped
           2: [4.0, 1.0],                # reversed: swapped
           3: [-1.5, 2.0],               # negative start: clamped
           4: [3.0, d[4] + 9.0],         # past the end: clamped
           5: [d[5], d[5] + 1.0]}        # starts exactly at the end: dropped
  for i, ts in cases.items():
    inp.queries[i]["ts"] = ts
  inp.write()
  m = _prepare(tmp_path, inp)
  info = m["splits"]["val"]
  assert info["dropped"] == {"span entirely before 0 s": 1, "span starts at or after the video's end": 2}
  assert info["repaired"]["reversed [st, ed] swapped"] == 1
  assert info["repaired"]["negative st clamped to 0"] == 1
  assert info["repaired"]["ed past the duration clamped"] == 1
  table = read_queries(open_prepared(str(tmp_path / "out")), "val")
  assert sorted(table.desc_id.tolist()) == [2, 3, 4, 6, 7]
  by_id = {int(i): (float(a), float(b), float(dur)) for i, a, b, dur in zip(table.desc_id, table.st, table.ed,
                                                                            table.duration)}
  assert by_id[2][:2] == (1.0, 4.0) and by_id[3][:2] == (0.0, 2.0) and by_id[4][1] == pytest.approx(d[4])
  assert all(0 <= st <= ed <= dur and st < dur for st, ed, dur in by_id.values())


def test_queries_of_one_video_disagree_on_its_duration(tmp_path, inp):
  inp.queries[1]["duration"] = inp.queries[0]["duration"] * 10  # 9.0 vs 90.0 s, lines 1 and 2.
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.jsonl, "line 2", "duration", "90.0 s", "line 1", "9.0 s")


def test_feature_rows_must_cover_the_duration(tmp_path, inp):
  name = inp.names[2]  # 14 s: 10 rows of 1.5 s
  inp.video[name] = dh.feature_rows(name, 4, inp.VIDEO_DIM)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.video_h5, name, "video", "4 rows", "expected 10 rows")
  inp.video[name] = dh.feature_rows(name, 9, inp.VIDEO_DIM)  # one row short: kept, counted
  inp.sub[name] = inp.sub[name][:9]
  inp.sub[name + "-mask"] = inp.sub[name + "-mask"][:9]
  inp.write()
  m = _prepare(tmp_path, inp)
  assert m["splits"]["val"]["repaired"]["feature rows differ from ceil(duration / 1.5 s) by 1-2 (kept)"] == 1


def test_annotation_byte_that_is_not_utf8(tmp_path, inp):
  lines = open(inp.jsonl, "rb").read().split(b"\n")
  lines[2] = lines[2].replace(b"thing", b"th\xffing")
  open(inp.jsonl, "wb").write(b"\n".join(lines))
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  col = lines[2].index(b"\xff") + 1
  assert_data_error(e, inp.jsonl, "line 3", "<text>", "not UTF-8", "0xff", f"column {col}")


def test_malformed_json_names_the_column(tmp_path, inp):
  line = json.dumps(inp.queries[2])
  broken = line.replace('"desc":', '"desc"')  # a missing colon in the middle of the line
  inp.write(raw_lines={2: broken})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  col = broken.index('"desc"') + len('"desc"') + 2
  assert_data_error(e, inp.jsonl, "line 3", "<json>", f"column {col}", "near")


def test_two_dimensional_subtitle_mask(tmp_path, inp):
  name = inp.names[1]
  rows = dh.tvr_rows(inp.durations[1])
  inp.sub[name + "-mask"] = np.ones((rows, 2), np.float32)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.sub_h5, name, "subtitle-mask", f"shape ({rows}, 2)", f"expected ({rows},)")


def test_cli_prints_one_error_line_and_fails(tmp_path, inp):
  name = inp.names[1]
  del inp.video[name]
  inp.write()
  out = str(tmp_path / "out")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  p = subprocess.run([sys.executable, "-m", "data_prep.tvr", f"--out_dir={out}", f"--val_file={inp.jsonl}",
                      f"--video_feature={inp.video_h5}", f"--subtitle_feature={inp.sub_h5}"],
                     cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert p.returncode != 0
  assert "Traceback" not in p.stderr, p.stderr
  lines = p.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], p.stderr
  assert_one_line(errors[0], inp.video_h5, name, "'video'", "missing")
  assert p.stdout.strip() == ""
  assert no_manifest(out)


# -- ActivityNet annotations -----------------------------------------------------

def _anet(tmp_path, ann=None, text=None):
  ann = ann or dh.anet_annotations()
  path = str(tmp_path / "val_1.json")
  if text is None:
    dh.write_json(path, ann)
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  h5 = dh.write_h5(str(tmp_path / "i3d.h5"), dh.anet_features(dh.anet_annotations()))
  return path, h5


def _prepare_anet(tmp_path, path, h5, **kw):
  return activitynet.prepare_activitynet(str(tmp_path / "out"), split_files={"val_1": path}, video_feature=h5,
                                         max_frames=8, **kw)


def test_activitynet_timestamps_and_sentences_differ_in_length(tmp_path):
  ann = dh.anet_annotations()
  ann["v_anet001"]["sentences"].append("One sentence too many.")
  path, h5 = _anet(tmp_path, ann)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  err = e.value
  assert_one_line(str(err), path, "v_anet001")
  assert err.field in ("timestamps", "sentences") and f"'{err.field}'" in str(err)


@pytest.mark.parametrize("sentence", ["", "  \n "])
def test_activitynet_empty_sentence(tmp_path, sentence):
  ann = dh.anet_annotations()
  ann["v_anet002"]["sentences"][1] = sentence
  path, h5 = _anet(tmp_path, ann)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  assert_data_error(e, path, "v_anet002 sentence 1", "sentences", "empty")


def test_activitynet_malformed_json(tmp_path):
  lines = json.dumps(dh.anet_annotations(), indent=1).splitlines()
  bad = next(i for i, line in enumerate(lines) if "v_anet001" in line) + 2  # 0-based index of a line.
  lines[bad] = lines[bad].rstrip(",") + " ]]"
  path, h5 = _anet(tmp_path, text="\n".join(lines) + "\n")
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  assert_data_error(e, path, f"line {bad + 1}", "<json>", "malformed JSON")


def test_activitynet_video_missing_from_the_feature_file(tmp_path):
  ann = dh.anet_annotations(4)  # v_anet003 has no features.
  path, h5 = _anet(tmp_path, ann)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  assert_data_error(e, h5, "v_anet003", "video", "missing")
  m = _prepare_anet(tmp_path, path, h5, missing_videos="drop")
  assert m["splits"]["val_1"]["dropped"] == {"video missing from the feature file": 1,
                                             "query of a dropped video": 2}
  assert (m["splits"]["val_1"]["num_videos"], m["splits"]["val_1"]["num_queries"]) == (3, 6)


# -- --missing_videos=drop --------------------------------------------------------

def test_missing_videos_drop(tmp_path, inp):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  gone = inp.names[1]
  del inp.video[gone]
  inp.write()
  m = _prepare(tmp_path, inp, missing_videos="drop")
  info = m["splits"]["val"]
  gone_ids = [q["desc_id"] for q in inp.queries if q["vid_name"] == gone]
  assert len(gone_ids) == 2
  assert info["dropped"] == {"video missing from the feature file": 1, "query of a dropped video": 2}
  assert (info["num_videos"], info["num_queries"]) == (3, 6)
  assert gone not in m["video2idx"]["val"]
  qt = read_queries(open_prepared(str(tmp_path / "out")), "val")
  assert sorted(qt.desc_id.tolist()) == sorted(q["desc_id"] for q in inp.queries if q["vid_name"] != gone)
  assert gone not in qt.vid_name
  assert sorted(set(qt.video_index.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("where", ["file", "uncreatable"])
def test_out_dir_that_cannot_be_a_folder(tmp_path, inp, where):
  if where == "file":
    out = tmp_path / "a_file"
    out.write_text("x")
    problem = "is a file"
  else:
    (tmp_path / "blocker").write_text("x")
    out = tmp_path / "blocker" / "sub" / "out"
    problem = "cannot create"
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(out), **inp.kwargs())
  assert_data_error(e, str(out), "<folder>", "out_dir", problem)


def test_feature_file_with_a_group_per_video(tmp_path, inp):
  import h5py
  name = inp.names[1]
  with h5py.File(inp.video_h5, "a") as f:
    del f[name]
    f.create_group(name).create_dataset("c3d_features", data=inp.video[name])
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  assert_data_error(e, inp.video_h5, name, "video", "h5 Group", "getting_data.md")
