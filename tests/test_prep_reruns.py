"""Interruptions, failed and partial re-runs of TVR and ActivityNet preparation: finished
shards are kept, a re-run continues or rewrites what changed, and the dataset published
before (prepared.json and its data folder) is never touched until a new one replaces it
whole. Ctrl-C and a full disk end the command with one line naming that dataset as intact.
"""

import errno
import os

import numpy as np
import pytest

import helpers as dh
from data_prep import tvr
from data_prep.records import DataError
from hammer_jax import files
from prep_helpers import (AnetInputs, SimulatedCrash, assert_data_error, crash_after, dataset_files, no_manifest,
                          run_cli, stat, tree_bytes)


def _prepare(tmp_path, inputs, out="out", **kw):
  return tvr.prepare_tvr(str(tmp_path / out), **inputs.kwargs(**kw))


# -- TVR ------------------------------------------------------------------------------

def _count_records(path: str) -> int:
  return len(dh.tfrecord_offsets(path))


def test_interrupted_write_keeps_finished_shards(tmp_path, monkeypatch):
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)  # 4 video shards of 2, 2, 2, 1.
  out = str(tmp_path / "out")
  crash_after(monkeypatch, 5)  # Shards 0 and 1 done, killed inside shard 2.
  with pytest.raises(SimulatedCrash):
    _prepare(tmp_path, inp, videos_per_shard=2)
  monkeypatch.undo()
  assert no_manifest(out)  # No prepared.json until the dataset is complete.
  # Only finished shards carry final names: no partial shard, no temp file, no query shard yet.
  assert dataset_files(out) == ["videos/1.0.0/videos-val.tfrecord-00000-of-00004",
                                 "videos/1.0.0/videos-val.tfrecord-00001-of-00004"]
  finished = dh.shard_files(out, "videos", "val")
  assert [_count_records(p) for p in finished] == [2, 2]
  before = {p: stat(p) for p in finished}

  m = _prepare(tmp_path, inp, videos_per_shard=2)
  assert not no_manifest(out)
  assert {p: stat(p) for p in finished} == before  # Not rewritten.
  assert m["splits"]["val"].get("video_shards_reused", 2) == 2
  assert (m["splits"]["val"]["num_videos"], m["splits"]["val"]["num_queries"]) == (7, 14)
  assert m["splits"]["val"]["num_frames"] == sum(len(v) for v in inp.video.values())

  ref = str(tmp_path / "ref")
  _prepare(tmp_path, inp, out="ref", videos_per_shard=2)  # Uninterrupted.
  names = [f for f in dataset_files(ref) if ".tfrecord-" in f]
  assert names == [f for f in dataset_files(out) if ".tfrecord-" in f]
  assert len(names) == 5
  for f in names:
    with open(os.path.join(dh.data_folder(out), f), "rb") as a, open(os.path.join(dh.data_folder(ref), f), "rb") as b:
      assert a.read() == b.read(), f


def test_rerun_with_other_arguments_rewrites_the_split(tmp_path):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  _prepare(tmp_path, inp, videos_per_shard=2)
  before = {p: stat(p) for p in dh.shard_files(out, "videos")}
  long_ids = max(len(t) for t in read_queries(open_prepared(out), "val").token_ids)
  assert long_ids > 6

  m = _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6)
  after = {p: stat(p) for p in dh.shard_files(out, "videos")}
  assert [os.path.basename(p) for p in after] == [os.path.basename(p) for p in before]
  assert not any(os.path.exists(p) for p in before)  # Every video shard written again, the old ones gone.
  assert sorted(os.listdir(out)) == sorted(["prepared.json", os.path.basename(dh.data_folder(out))])
  assert _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6).get("up_to_date")  # A re-run: no-op.
  assert {p: stat(p) for p in dh.shard_files(out, "videos")} == after
  assert m["max_query_len_prepared"] == 6 and m["splits"]["val"].get("video_shards_reused", 0) == 0
  data = open_prepared(out)
  assert max(len(t) for t in read_queries(data, "val").token_ids) == 6
  for rec in data.builder("videos").as_dataset(split="val").as_numpy_iterator():
    assert max(len(t) for t in rec["queries"]["token_ids"]) <= 6

  # Another shard size: the old shards (another "-of-N") must not survive next to the new ones.
  _prepare(tmp_path, inp, videos_per_shard=3, max_query_len=6)
  assert [os.path.basename(p) for p in dh.shard_files(out, "videos")] == [
      f"videos-val.tfrecord-{i:05d}-of-00003" for i in range(3)]


def test_interrupted_rewrite_keeps_the_previous_dataset(tmp_path, monkeypatch):
  """A re-run with other arguments that is killed half-way leaves the previous dataset whole and loadable."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  _prepare(tmp_path, inp, videos_per_shard=2)
  before = tree_bytes(out)
  crash_after(monkeypatch, 3)
  with pytest.raises(SimulatedCrash):
    _prepare(tmp_path, inp, videos_per_shard=2, max_query_len=6)
  monkeypatch.undo()
  assert tree_bytes(out) == before
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
  before = tree_bytes(out)
  bad = dict(video)
  bad[inp.names[3]] = bad[inp.names[3]].copy()
  bad[inp.names[3]][1, 2] = np.nan
  dh.write_h5(inp.video_h5, bad)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, **kwargs)
  assert_data_error(e, inp.video_h5, inp.names[3], "video", "NaN or Inf")
  assert tree_bytes(out) == before
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
  before = tree_bytes(out)
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, **inp.kwargs())
  assert_data_error(e, out, "<folder>", "out_dir", "splits train, val", "prepares val", "--overwrite")
  assert tree_bytes(out) == before
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
  assert_data_error(e, inp.video_h5, inp.names[2], "video", "not numbers")
  assert not os.path.exists(out)




# -- ActivityNet: the same guarantees -------------------------------------------------

def _anet_shard_bytes(out: str) -> dict[str, bytes]:
  return {os.path.basename(p): open(p, "rb").read() for d in ("videos", "queries") for p in dh.shard_files(out, d)}


def test_anet_interrupted_write_keeps_finished_shards(tmp_path, monkeypatch):
  inp = AnetInputs(str(tmp_path / "in"), n_videos=7)  # 4 video shards of 2, 2, 2, 1.
  out = str(tmp_path / "out")
  crash_after(monkeypatch, 5, "activitynet")  # Shards 0 and 1 done, killed inside shard 2.
  with pytest.raises(SimulatedCrash):
    inp.prepare(out, videos_per_shard=2)
  monkeypatch.undo()
  assert no_manifest(out)
  assert dataset_files(out) == ["videos/1.0.0/videos-val_1.tfrecord-00000-of-00004",
                                "videos/1.0.0/videos-val_1.tfrecord-00001-of-00004"]
  finished = dh.shard_files(out, "videos", "val_1")
  before = {p: stat(p) for p in finished}
  m = inp.prepare(out, videos_per_shard=2)
  assert {p: stat(p) for p in finished} == before  # Kept, not rewritten.
  info = m["splits"]["val_1"]
  assert info["video_shards_reused"] == 2 and (info["num_videos"], info["num_queries"]) == (7, 14)
  ref = str(tmp_path / "ref")
  inp.prepare(ref, videos_per_shard=2)  # Uninterrupted.
  assert _anet_shard_bytes(out) == _anet_shard_bytes(ref) and len(_anet_shard_bytes(ref)) == 5


def test_anet_interrupted_rewrite_keeps_the_previous_dataset(tmp_path, monkeypatch):
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = AnetInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  inp.prepare(out, videos_per_shard=2)
  before = tree_bytes(out)
  crash_after(monkeypatch, 3, "activitynet")
  with pytest.raises(SimulatedCrash):
    inp.prepare(out, videos_per_shard=2, max_frames=4)
  monkeypatch.undo()
  assert tree_bytes(out) == before
  assert len(read_queries(open_prepared(out), "val_1")) == 14
  m = inp.prepare(out, videos_per_shard=2, max_frames=4)
  assert m["max_frames_prepared"] == 4 and m["splits"]["val_1"]["num_videos"] == 7
  for rec in open_prepared(out).builder("videos").as_dataset(split="val_1").as_numpy_iterator():
    assert rec["video"].shape[0] == 4


def test_anet_failed_rerun_leaves_the_previous_dataset_byte_identical(tmp_path):
  """NaN found while writing (only reading values shows it): the complete old dataset is untouched."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  inp = AnetInputs(str(tmp_path / "in"), splits=("train", "val_1"))
  out = str(tmp_path / "out")
  inp.prepare(out, videos_per_shard=2)
  before = tree_bytes(out)
  bad = sorted(inp.ann["val_1"])[1]
  inp.feats[bad] = inp.feats[bad].copy()
  inp.feats[bad][2, 1] = np.nan
  inp.write()
  with pytest.raises(DataError) as e:
    inp.prepare(out, videos_per_shard=2)
  assert_data_error(e, inp.h5, bad, "video", "NaN or Inf", "row 2")
  assert tree_bytes(out) == before
  data = open_prepared(out)
  assert len(read_queries(data, "train")) == 6 and len(read_queries(data, "val_1")) == 8


def test_anet_partial_rerun_is_refused_or_replaces_the_whole_dataset(tmp_path):
  from hammer_jax.data.prepared_data import open_prepared
  inp = AnetInputs(str(tmp_path / "in"), splits=("train", "val_1"))
  out = str(tmp_path / "out")
  inp.prepare(out)
  before = tree_bytes(out)
  with pytest.raises(DataError) as e:
    inp.prepare(out, split_files={"val_1": inp.paths["val_1"]})
  assert_data_error(e, out, "<folder>", "out_dir", "splits train, val_1", "prepares val_1", "--overwrite")
  assert tree_bytes(out) == before
  m = inp.prepare(out, split_files={"val_1": inp.paths["val_1"]}, overwrite=True)
  assert sorted(m["splits"]) == ["val_1"] and sorted(open_prepared(out).manifest["splits"]) == ["val_1"]
  assert not [f for f in dh.shard_files(out, "videos") if "-train." in f]
  assert sorted(os.listdir(out)) == sorted(["prepared.json", os.path.basename(dh.data_folder(out))])


# -- Ctrl-C and a full disk: one line, the earlier dataset named as intact ---------------

def _runs(tmp_path, source):
  """(prepare(**kw) for `source` into tmp_path/out, the out folder)."""
  out = str(tmp_path / "out")
  if source == "tvr":
    inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=5)
    return (lambda **kw: tvr.prepare_tvr(out, videos_per_shard=2, **inp.kwargs(**kw))), out
  inp = AnetInputs(str(tmp_path / "in"), n_videos=5)
  return (lambda **kw: inp.prepare(out, videos_per_shard=2, **kw)), out


@pytest.mark.parametrize("source", ["tvr", "activitynet"])
def test_ctrl_c_is_one_line_naming_the_intact_dataset(tmp_path, monkeypatch, source):
  prepare, out = _runs(tmp_path, source)
  first = prepare()
  before = tree_bytes(out)
  crash_after(monkeypatch, 3, source, exc=KeyboardInterrupt)
  message = run_cli(lambda: prepare(max_query_len=6), out)
  monkeypatch.undo()
  assert "interrupted (Ctrl-C)" in message and first["data_folder"] in message and "intact" in message
  assert "continues from the finished shards" in message
  assert tree_bytes(out) == before
  assert prepare(max_query_len=6)["max_query_len_prepared"] == 6  # The lock went with the interrupted run.


@pytest.mark.parametrize("error", ["oserror", "tensorflow"])
@pytest.mark.parametrize("source", ["tvr", "activitynet"])
def test_full_disk_is_one_line_naming_the_intact_dataset(tmp_path, monkeypatch, source, error):
  import tensorflow as tf
  prepare, out = _runs(tmp_path, source)
  real = files.atomic_write_with
  shards = {"n": 0}

  def atomic_write_with(path, write):
    if ".tfrecord-" in str(path):
      shards["n"] += 1
      if shards["n"] > 1:
        if error == "oserror":
          raise OSError(errno.ENOSPC, "No space left on device", str(path))
        raise tf.errors.ResourceExhaustedError(None, None, f"{path}; No space left on device")
    return real(path, write)

  monkeypatch.setattr(files, "atomic_write_with", atomic_write_with)
  message = run_cli(prepare, out)  # Nothing published yet.
  assert "no space left" in message and "no dataset was published" in message, message
  monkeypatch.undo()
  first = prepare()
  before = tree_bytes(out)
  shards["n"] = 0
  monkeypatch.setattr(files, "atomic_write_with", atomic_write_with)
  message = run_cli(lambda: prepare(max_query_len=6), out)
  assert "no space left" in message and first["data_folder"] in message and "is intact" in message, message
  if error == "oserror":
    assert ".tfrecord-00001-of-" in message  # The file it was writing.
  assert tree_bytes(out) == before
