"""Bad input gets a one-line error naming the file, the record and the field; nothing
already written is lost when preparation is interrupted; damaged shards and
unprepared folders are reported in one line that says what is wrong and where.

Inputs are tiny TVR-layout corpora (`data_helpers.TvrInputs`: a jsonl, a 6-wide
video h5 and a 5-wide subtitle h5 with `-mask` keys) and tiny ActivityNet files,
written into tmp_path.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import helpers as dh
from data_prep import activitynet, features, tvr
from data_prep.records import DataError
from helpers import pipeline_spec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_one_line(message: str, *parts) -> None:
  assert message and "\n" not in message and "\r" not in message, repr(message)
  for p in parts:
    assert str(p) in message, (p, message)


def _assert_data_error(exc_info, path: str, record: str, field: str, *more) -> DataError:
  """The DataError names the file, the record and the field, on one line."""
  e = exc_info.value
  assert isinstance(e, DataError)
  _assert_one_line(str(e), path, record, f"'{field}'", *more)
  assert e.path == path and record in e.record and e.field == field, (e.path, e.record, e.field)
  return e


def _no_manifest(out: str) -> bool:
  return not os.path.exists(os.path.join(out, "prepared.json"))


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
  _assert_data_error(e, inp.video_h5, name, "video", "missing")
  assert _no_manifest(str(tmp_path / "out"))


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
  _assert_data_error(e, path, name, stream, f"width {width}")


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
  _assert_data_error(e, path, name, stream, "NaN or Inf", "row 2")
  assert _no_manifest(str(tmp_path / "out"))


def test_video_of_zero_frames(tmp_path, inp):
  name = inp.names[0]
  inp.video[name] = np.zeros((0, inp.VIDEO_DIM), np.float32)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.video_h5, name, "video", "zero frames")


@pytest.mark.parametrize("what", ["absent", "not_h5"])
def test_unreadable_feature_file(tmp_path, inp, what):
  path = str(tmp_path / "nowhere.h5") if what == "absent" else inp.jsonl
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), split_files={"val": inp.jsonl}, video_feature=[path],
                    subtitle_feature=inp.sub_h5)
  _assert_data_error(e, path, "<file>", "video")


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
  _assert_data_error(e, str(folder), name, "video",
                     {"width": "width 5", "nan": "row 3", "zero_rows": "zero frames"}[problem])


# -- TVR: annotations -----------------------------------------------------------

def test_duplicate_desc_id_within_a_file(tmp_path, inp):
  inp.queries[4]["desc_id"] = inp.queries[1]["desc_id"]  # Lines 5 and 2.
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.jsonl, "line 5", "desc_id", "desc_id 1", "line 2", "duplicate")


def test_duplicate_desc_id_across_train_and_val(tmp_path, inp):
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=5)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(str(tmp_path / "out"), split_files={"train": train.jsonl, "val": inp.jsonl},
                    video_feature=[inp.video_h5], subtitle_feature=inp.sub_h5)
  # val's desc_id 5 (its 6th line) is also in train.
  _assert_data_error(e, inp.jsonl, "desc_id 5", "desc_id", train.jsonl, "duplicate")


def test_malformed_json_line(tmp_path, inp):
  inp.write(raw_lines={2: '{"vid_name": "show_s01e01_seg02_clip_00", "desc_id": 99, "ts": [1.0, '})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.jsonl, "line 3", "<json>", "malformed JSON")


@pytest.mark.parametrize("desc", ["", "   ", None])
def test_empty_description(tmp_path, inp, desc):
  if desc is None:
    del inp.queries[2]["desc"]
  else:
    inp.queries[2]["desc"] = desc
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.jsonl, "line 3", "desc", "desc_id 2")


def test_missing_ts(tmp_path, inp):
  del inp.queries[1]["ts"]
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.jsonl, "line 2", "ts", "desc_id 1", "missing")


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
  _assert_data_error(e, inp.jsonl, "line 2", "duration", "90.0 s", "line 1", "9.0 s")


def test_feature_rows_must_cover_the_duration(tmp_path, inp):
  name = inp.names[2]  # 14 s: 10 rows of 1.5 s
  inp.video[name] = dh.feature_rows(name, 4, inp.VIDEO_DIM)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.video_h5, name, "video", "4 rows", "expected 10 rows")
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
  _assert_data_error(e, inp.jsonl, "line 3", "<text>", "not UTF-8", "0xff", f"column {col}")


def test_malformed_json_names_the_column(tmp_path, inp):
  line = json.dumps(inp.queries[2])
  broken = line.replace('"desc":', '"desc"')  # a missing colon in the middle of the line
  inp.write(raw_lines={2: broken})
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  col = broken.index('"desc"') + len('"desc"') + 2
  _assert_data_error(e, inp.jsonl, "line 3", "<json>", f"column {col}", "near")


def test_two_dimensional_subtitle_mask(tmp_path, inp):
  name = inp.names[1]
  rows = dh.tvr_rows(inp.durations[1])
  inp.sub[name + "-mask"] = np.ones((rows, 2), np.float32)
  inp.write()
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.sub_h5, name, "subtitle-mask", f"shape ({rows}, 2)", f"expected ({rows},)")


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
  _assert_one_line(errors[0], inp.video_h5, name, "'video'", "missing")
  assert p.stdout.strip() == ""
  assert _no_manifest(out)


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
  _assert_one_line(str(err), path, "v_anet001")
  assert err.field in ("timestamps", "sentences") and f"'{err.field}'" in str(err)


@pytest.mark.parametrize("sentence", ["", "  \n "])
def test_activitynet_empty_sentence(tmp_path, sentence):
  ann = dh.anet_annotations()
  ann["v_anet002"]["sentences"][1] = sentence
  path, h5 = _anet(tmp_path, ann)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  _assert_data_error(e, path, "v_anet002 sentence 1", "sentences", "empty")


def test_activitynet_malformed_json(tmp_path):
  lines = json.dumps(dh.anet_annotations(), indent=1).splitlines()
  bad = next(i for i, line in enumerate(lines) if "v_anet001" in line) + 2  # 0-based index of a line.
  lines[bad] = lines[bad].rstrip(",") + " ]]"
  path, h5 = _anet(tmp_path, text="\n".join(lines) + "\n")
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  _assert_data_error(e, path, f"line {bad + 1}", "<json>", "malformed JSON")


def test_activitynet_video_missing_from_the_feature_file(tmp_path):
  ann = dh.anet_annotations(4)  # v_anet003 has no features.
  path, h5 = _anet(tmp_path, ann)
  with pytest.raises(DataError) as e:
    _prepare_anet(tmp_path, path, h5)
  _assert_data_error(e, h5, "v_anet003", "video", "missing")
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


# -- interruption and re-runs -----------------------------------------------------

class SimulatedCrash(Exception):
  pass


def _crash_after(monkeypatch, n_reads: int):
  real_read = features.VisualFeatures.read
  calls = {"n": 0}

  def read(self, name):
    calls["n"] += 1
    if calls["n"] > n_reads:
      raise SimulatedCrash(f"killed while reading {name}")
    return real_read(self, name)

  monkeypatch.setattr(features.VisualFeatures, "read", read)


def _dataset_files(out: str) -> list[str]:
  root = dh.data_folder(out)
  return sorted(f"{d}/1.0.0/{f}" for d in ("videos", "queries")
                for f in os.listdir(os.path.join(root, d, "1.0.0")))


def _stat(path: str):
  st = os.stat(path)
  return st.st_ino, st.st_mtime_ns


def _count_records(path: str) -> int:
  return len(dh.tfrecord_offsets(path))


def test_interrupted_write_keeps_finished_shards(tmp_path, monkeypatch):
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)  # 4 video shards of 2, 2, 2, 1.
  out = str(tmp_path / "out")
  _crash_after(monkeypatch, 5)  # Shards 0 and 1 done, killed inside shard 2.
  with pytest.raises(SimulatedCrash):
    _prepare(tmp_path, inp, videos_per_shard=2)
  monkeypatch.undo()
  assert _no_manifest(out)  # No prepared.json until the dataset is complete.
  # Only finished shards carry final names: no partial shard, no temp file, no query shard yet.
  assert _dataset_files(out) == ["videos/1.0.0/videos-val.tfrecord-00000-of-00004",
                                 "videos/1.0.0/videos-val.tfrecord-00001-of-00004"]
  finished = dh.shard_files(out, "videos", "val")
  assert [_count_records(p) for p in finished] == [2, 2]
  before = {p: _stat(p) for p in finished}

  m = _prepare(tmp_path, inp, videos_per_shard=2)
  assert not _no_manifest(out)
  assert {p: _stat(p) for p in finished} == before  # Not rewritten.
  assert m["splits"]["val"].get("video_shards_reused", 2) == 2
  assert (m["splits"]["val"]["num_videos"], m["splits"]["val"]["num_queries"]) == (7, 14)
  assert m["splits"]["val"]["num_frames"] == sum(len(v) for v in inp.video.values())

  ref = str(tmp_path / "ref")
  _prepare(tmp_path, inp, out="ref", videos_per_shard=2)  # Uninterrupted.
  names = [f for f in _dataset_files(ref) if ".tfrecord-" in f]
  assert names == [f for f in _dataset_files(out) if ".tfrecord-" in f]
  assert len(names) == 5
  for f in names:
    with open(os.path.join(dh.data_folder(out), f), "rb") as a, open(os.path.join(dh.data_folder(ref), f), "rb") as b:
      assert a.read() == b.read(), f


def test_rerun_with_other_arguments_rewrites_the_split(tmp_path):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  _prepare(tmp_path, inp, videos_per_shard=2)
  before = {p: _stat(p) for p in dh.shard_files(out, "videos")}
  long_ids = max(len(t) for t in read_queries(open_prepared(out), "val").token_ids)
  assert long_ids > 6

  m = _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6)
  after = {p: _stat(p) for p in dh.shard_files(out, "videos")}
  assert [os.path.basename(p) for p in after] == [os.path.basename(p) for p in before]
  assert not any(os.path.exists(p) for p in before)  # Every video shard written again, the old ones gone.
  assert sorted(os.listdir(out)) == sorted(["prepared.json", os.path.basename(dh.data_folder(out))])
  assert _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6).get("up_to_date")  # A re-run: no-op.
  assert {p: _stat(p) for p in dh.shard_files(out, "videos")} == after
  assert m["max_query_len_prepared"] == 6 and m["splits"]["val"].get("video_shards_reused", 0) == 0
  data = open_prepared(out)
  assert max(len(t) for t in read_queries(data, "val").token_ids) == 6
  for rec in data.builder("videos").as_dataset(split="val").as_numpy_iterator():
    assert max(len(t) for t in rec["queries"]["token_ids"]) <= 6

  # Another shard size: the old shards (another "-of-N") must not survive next to the new ones.
  _prepare(tmp_path, inp, videos_per_shard=3, max_query_len=6)
  assert [os.path.basename(p) for p in dh.shard_files(out, "videos")] == [
      f"videos-val.tfrecord-{i:05d}-of-00003" for i in range(3)]


def _tree_bytes(root: str) -> dict[str, bytes]:
  """Every file of the dataset prepared.json describes: the manifest and its data folder."""
  out = {"prepared.json": open(os.path.join(root, "prepared.json"), "rb").read()}
  data = dh.data_folder(root)
  for folder, _, names in os.walk(data):
    for n in names:
      path = os.path.join(folder, n)
      out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def test_interrupted_rewrite_keeps_the_previous_dataset(tmp_path, monkeypatch):
  """A re-run with other arguments that is killed half-way leaves the previous dataset whole and loadable."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  _prepare(tmp_path, inp, videos_per_shard=2)
  before = _tree_bytes(out)
  _crash_after(monkeypatch, 3)
  with pytest.raises(SimulatedCrash):
    _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6)
  monkeypatch.undo()
  assert _tree_bytes(out) == before
  assert len(read_queries(open_prepared(out), "val")) == 14
  m = _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6)
  assert m["max_query_len_prepared"] == 6 and m["splits"]["val"]["num_videos"] == 7


def test_failed_rerun_leaves_the_previous_dataset_byte_identical(tmp_path):
  """NaN found while writing (it can only be seen reading values): the complete old dataset is untouched."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=100)
  inp = dh.TvrInputs(str(tmp_path / "in"))
  video = {**train.video, **inp.video}
  sub = {**train.sub, **inp.sub}
  dh.write_h5(inp.video_h5, video)
  dh.write_h5(inp.sub_h5, sub)
  kwargs = dict(split_files={"train": train.jsonl, "val": inp.jsonl}, video_feature=[inp.video_h5],
                subtitle_feature=inp.sub_h5, videos_per_shard=2)
  out = str(tmp_path / "out")
  tvr.prepare_tvr(out, **kwargs)
  before = _tree_bytes(out)
  bad = dict(video)
  bad[inp.names[3]] = bad[inp.names[3]].copy()
  bad[inp.names[3]][1, 2] = np.nan
  dh.write_h5(inp.video_h5, bad)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, **kwargs)
  _assert_data_error(e, inp.video_h5, inp.names[3], "video", "NaN or Inf")
  assert _tree_bytes(out) == before
  data = open_prepared(out)
  assert len(read_queries(data, "val")) == 8 and len(read_queries(data, "train")) == 8
  assert sum(1 for _ in data.builder("videos").as_dataset(split="train")) == 4


def test_partial_rerun_is_refused_or_replaces_the_whole_dataset(tmp_path):
  """Preparing only val into a folder holding train + val never leaves a mix."""
  from hammer_jax.data.prepared_data import open_prepared
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=100)
  inp = dh.TvrInputs(str(tmp_path / "in"))
  dh.write_h5(inp.video_h5, {**train.video, **inp.video})
  dh.write_h5(inp.sub_h5, {**train.sub, **inp.sub})
  out = str(tmp_path / "out")
  tvr.prepare_tvr(out, split_files={"train": train.jsonl, "val": inp.jsonl}, video_feature=[inp.video_h5],
                  subtitle_feature=inp.sub_h5)
  before = _tree_bytes(out)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, **inp.kwargs())
  _assert_data_error(e, out, "<folder>", "out_dir", "splits train, val", "prepares val", "--overwrite")
  assert _tree_bytes(out) == before
  m = tvr.prepare_tvr(out, overwrite=True, **inp.kwargs())
  assert sorted(m["splits"]) == ["val"] and sorted(open_prepared(out).manifest["splits"]) == ["val"]
  assert sorted(m["video2idx"]) == ["val"]
  assert not [f for f in dh.shard_files(out, "videos") if "-train." in f]


def test_checks_before_writing_cover_every_split(tmp_path):
  """A string-typed dataset in the second split's video stops the run before the first split's first shard."""
  train = dh.TvrInputs(str(tmp_path / "train"), prefix="other_s02e03_seg01_clip_", first_desc_id=100)
  inp = dh.TvrInputs(str(tmp_path / "in"))
  import h5py
  dh.write_h5(inp.video_h5, {**train.video, **{k: v for k, v in inp.video.items() if k != inp.names[2]}})
  with h5py.File(inp.video_h5, "a") as f:
    f.create_dataset(inp.names[2], data=np.array([["a", "b"]] * 5, dtype="S1"))
  dh.write_h5(inp.sub_h5, {**train.sub, **inp.sub})
  out = str(tmp_path / "out")
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, split_files={"train": train.jsonl, "val": inp.jsonl}, video_feature=[inp.video_h5],
                    subtitle_feature=inp.sub_h5)
  _assert_data_error(e, inp.video_h5, inp.names[2], "video", "not numbers")
  assert not os.path.exists(out)


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
  _assert_data_error(e, str(out), "<folder>", "out_dir", problem)


# -- damaged shards at training / evaluation time -----------------------------------

@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory):
  """A valid tiny TVR corpus: 7 videos in 4 shards (2, 2, 2, 1)."""
  root = tmp_path_factory.mktemp("small")
  inp = dh.TvrInputs(str(root / "in"), n_videos=7)
  out = str(root / "out")
  tvr.prepare_tvr(out, videos_per_shard=2, **inp.kwargs())
  return out


def _spec():
  return pipeline_spec(max_frames=16, max_query_len=16, clip_len=2, num_negatives=2, shuffle_buffer=8)


def _damaged_copy(prepared_small, tmp_path, damage: str) -> tuple[str, str]:
  out = str(tmp_path / "damaged")
  shutil.copytree(prepared_small, out)
  shard = dh.shard_files(out, "videos", "val")[1]
  if damage == "corrupted":
    dh.corrupt_record(shard, 1)
  elif damage == "truncated":
    dh.truncate_in_record(shard, -1)
  else:  # Cut exactly after the first record: the file still parses, one record is gone.
    start, n = dh.tfrecord_offsets(shard)[0]
    with open(shard, "r+b") as f:
      f.truncate(start + n + 4)
  return out, shard


def _read_train(out):
  from hammer_jax.data.input_pipeline import TrainBatches
  from hammer_jax.data.prepared_data import open_prepared
  tb = TrainBatches(open_prepared(out), "val", _spec(), local_batch_size=4, seed=0,
                    process_index=0, process_count=1)
  for _ in range(2 * -(-tb.num_examples // 4)):  # Two epochs.
    next(tb)


def _read_eval(out):
  from hammer_jax.data.input_pipeline import eval_video_batches
  from hammer_jax.data.prepared_data import open_prepared
  for _ in eval_video_batches(open_prepared(out), "val", _spec(), 3, process_index=0, process_count=1):
    pass


@pytest.mark.parametrize("reader", [_read_train, _read_eval], ids=["train", "eval"])
@pytest.mark.parametrize("damage", ["corrupted", "truncated", "cut_at_record_boundary"])
def test_damaged_shard_names_the_shard(prepared_small, tmp_path, reader, damage):
  from hammer_jax.data.input_pipeline import ShardError
  out, shard = _damaged_copy(prepared_small, tmp_path, damage)
  with pytest.raises(ShardError) as e:
    reader(out)
  _assert_one_line(str(e.value), os.path.basename(shard))


def test_undamaged_copy_reads_fine(prepared_small, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(prepared_small, out)
  _read_train(out)
  _read_eval(out)


# -- opening prepared data ---------------------------------------------------------

def test_open_unprepared_folder_says_what_to_run(tmp_path):
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared
  folder = tmp_path / "never_prepared"
  folder.mkdir()
  with pytest.raises(PreparedDataError) as e:
    open_prepared(str(folder))
  _assert_one_line(str(e.value), str(folder), "prepared.json", "python -m data_prep")
  with pytest.raises(PreparedDataError) as e:
    open_prepared("")
  _assert_one_line(str(e.value), "python -m data_prep")


def test_unknown_split_is_named(prepared_small):
  from hammer_jax.data.input_pipeline import TrainBatches, eval_video_batches
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared, read_queries
  data = open_prepared(prepared_small)
  for call in (lambda: data.split("train"), lambda: read_queries(data, "train"),
               lambda: TrainBatches(data, "train", _spec(), local_batch_size=2, seed=0, process_index=0,
                                    process_count=1),
               lambda: next(eval_video_batches(data, "train", _spec(), 2, process_index=0, process_count=1))):
    with pytest.raises(PreparedDataError) as e:
      call()
    _assert_one_line(str(e.value), prepared_small, "'train'", "val", "python -m data_prep")


def test_other_vocabulary_is_refused(prepared_small):
  from hammer_jax.model import pretrained
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared
  data = open_prepared(prepared_small)
  ours = pretrained.vocab_fingerprint(pretrained.resolve_checkpoint_dir(need_weights=False))
  assert data.manifest["vocab_sha256"] == ours
  data.check_vocabulary(ours)
  data.check_vocabulary(None)
  other = "ab" * 32
  with pytest.raises(PreparedDataError) as e:
    data.check_vocabulary(other, "/ckpt/bert-base-uncased")
  _assert_one_line(str(e.value), prepared_small, ours[:12], other[:12], "/ckpt/bert-base-uncased",
                   "--text_checkpoint")


def test_feature_file_with_a_group_per_video(tmp_path, inp):
  import h5py
  name = inp.names[1]
  with h5py.File(inp.video_h5, "a") as f:
    del f[name]
    f.create_group(name).create_dataset("c3d_features", data=inp.video[name])
  with pytest.raises(DataError) as e:
    _prepare(tmp_path, inp)
  _assert_data_error(e, inp.video_h5, name, "video", "h5 Group", "getting_data.md")
