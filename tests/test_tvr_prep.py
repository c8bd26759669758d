"""The real TVR val (10,895 queries, 2,179 videos) and test_public, with generated features."""

import json
import math
import os

import h5py
import numpy as np
import pytest

from helpers import pipeline_spec, SHARED_DIR
from data_prep.tvr import prepare_tvr
from hammer_jax.data import input_pipeline as ip
from hammer_jax.data import prepared_data

TVR = os.path.join(SHARED_DIR, "data", "tvr")
VAL = os.path.join(TVR, "tvr_val_release.jsonl")
TEST = os.path.join(TVR, "tvr_test_public_release.jsonl")
VIDEO2DUR = os.path.join(TVR, "tvr_video2dur_idx.json")
NO_SUBTITLES = 7  # every 7th video is left out of the subtitle file


def _features(name: str, rows: int, dim: int, salt: int) -> np.ndarray:
  """Deterministic features of (video, row): recomputable in the assertions."""
  seed = int.from_bytes(name.encode()[-8:].rjust(8, b"\0"), "little") % (2**32) + salt
  return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def tvr_prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tvr")
  lines = [json.loads(l) for l in open(VAL)]
  video2dur = json.load(open(VIDEO2DUR))
  durations = {r["vid_name"]: r["duration"] for r in lines}
  durations.update({n: d for n, (d, _) in video2dur["test_public"].items()})
  with h5py.File(tmp / "video.h5", "w") as fv, h5py.File(tmp / "sub.h5", "w") as fs:
    for i, (name, dur) in enumerate(sorted(durations.items())):
      rows = max(1, math.ceil(dur / 1.5))
      fv[name] = _features(name, rows, 6, 0)
      if i % NO_SUBTITLES:
        fs[name] = _features(name, rows, 4, 1)
        fs[name + "-mask"] = (np.arange(rows) % 2).astype(np.float32)
  out = tmp / "prepared"
  manifest = prepare_tvr(str(out), split_files={"val": VAL, "test_public": TEST},
                         video_feature=[str(tmp / "video.h5")], subtitle_feature=str(tmp / "sub.h5"),
                         video2dur_idx=VIDEO2DUR, videos_per_shard=512)
  return prepared_data.open_prepared(str(out)), manifest, lines, video2dur


def test_every_query_once_with_its_fields(tvr_prepared):
  data, manifest, lines, _ = tvr_prepared
  assert manifest["splits"]["val"]["num_queries"] == 10895
  assert manifest["splits"]["val"]["num_videos"] == 2179
  table = prepared_data.read_queries(data, "val")
  assert len(table) == 10895 and len(set(table.desc_id.tolist())) == 10895
  by_id = {r["desc_id"]: r for r in lines}
  for i in range(len(table)):
    r = by_id[int(table.desc_id[i])]
    assert table.desc[i] == r["desc"].strip()
    assert table.vid_name[i] == r["vid_name"] and table.type[i] == r["type"]
    st, ed = sorted(r["ts"])
    assert table.st[i] == pytest.approx(max(st, 0), abs=1e-4)
    assert table.ed[i] == pytest.approx(min(ed, r["duration"]), abs=1e-4)


def test_repairs_counted_as_the_data_has_them(tvr_prepared):
  """The real val file has no span to repair or drop (spans needing each repair:
  test_data_errors.py::test_spans_are_repaired_or_dropped_never_inverted); videos without subtitles are counted."""
  _, manifest, lines, _ = tvr_prepared
  past = sum(1 for r in lines if max(r["ts"]) > r["duration"])
  reversed_ = sum(1 for r in lines if r["ts"][0] > r["ts"][1])
  repaired = manifest["splits"]["val"]["repaired"]
  assert repaired.get("ed past the duration clamped", 0) == past
  assert repaired.get("reversed [st, ed] swapped", 0) == reversed_
  names = sorted({r["vid_name"] for r in lines})
  missing_subs = sum(1 for n in names if sorted(set(names) | set(tvr_prepared[3]["test_public"])).index(n) % NO_SUBTITLES == 0)
  assert repaired["video without subtitles: zeros"] == missing_subs


def test_features_equal_what_went_in(tvr_prepared):
  data, manifest, _, video2dur = tvr_prepared
  spec = pipeline_spec(max_frames=128, max_query_len=30, clip_len=16)
  names = {v: k for k, v in manifest["video2idx"]["val"].items()}
  assert all(video2dur["val"][n][1] == idx for idx, n in names.items())
  all_names = sorted(set(video2dur["val"]) | set(video2dur["test_public"]))
  order = {n: i for i, n in enumerate(all_names)}
  builder = data.builder("videos")
  seen = 0
  for rec in builder.as_dataset(split="val", shuffle_files=False).as_numpy_iterator():
    name = rec["vid_name"].decode()
    rows = rec["video"].shape[0]
    np.testing.assert_array_equal(rec["video"], _features(name, rows, 6, 0))
    assert rec["frame_seconds"] == pytest.approx(1.5)
    if order[name] % NO_SUBTITLES:
      np.testing.assert_array_equal(rec["subtitle"], _features(name, rows, 4, 1))
      np.testing.assert_array_equal(rec["subtitle_mask"], np.arange(rows) % 2)
    else:
      assert not rec["subtitle"].any() and not rec["subtitle_mask"].any()
    seen += 1
  assert seen == 2179
  batches = list(ip.eval_video_batches(data, "val", spec, 256, process_index=0, process_count=1))
  assert sum(int(b["example_mask"].sum()) for b in batches) == 2179


def test_one_epoch_labels_consistent(tvr_prepared):
  """Every val query with its moment inside the first 96 rows (144 s) once per epoch, labels from the rule;
  the 9 queries whose moment ends later are left out, as README and docs/getting_data.md say."""
  data, _, lines, _ = tvr_prepared
  by_id = {r["desc_id"]: r for r in lines}
  cut = {r["desc_id"] for r in lines if math.ceil(np.float32(min(max(r["ts"]), r["duration"])) / np.float32(1.5)) > 96}
  assert len(cut) == 9
  spec = pipeline_spec(max_frames=96, max_query_len=30, clip_len=16, shuffle_buffer=64)
  it = ip.TrainBatches(data, "val", spec, local_batch_size=5, seed=0, process_index=0, process_count=1)
  assert it.num_examples == 10895 - 9
  seen = set()
  for _ in range(it.num_examples // 5):
    b = next(it)
    for j, desc_id in enumerate(b["desc_id"].tolist()):
      assert desc_id not in seen and desc_id not in cut
      seen.add(desc_id)
      r = by_id[desc_id]
      n = int(b["frame_mask"][j].sum())
      assert n == min(96, math.ceil(r["duration"] / 1.5))
      st, ed = sorted(r["ts"])
      ed = min(ed, r["duration"])
      start = min(max(math.floor(np.float32(st) / np.float32(1.5)), 0), n - 1)
      end = max(min(math.ceil(np.float32(ed) / np.float32(1.5)) - 1, n - 1), start)
      assert (b["start_frame"][j], b["end_frame"][j]) == (start, end), desc_id
  assert len(seen) == (10895 - 9) // 5 * 5  # Whole batches of the one epoch.


def test_test_public_split(tvr_prepared):
  data, manifest, _, video2dur = tvr_prepared
  info = manifest["splits"]["test_public"]
  assert info["num_videos"] == len(video2dur["test_public"]) == 1089
  assert info["has_ground_truth"] is False
  table = prepared_data.read_queries(data, "test_public")
  assert len(table) == sum(1 for _ in open(TEST))
  assert set(table.vid_name) == {""} and np.all(table.video_index == -1)
  assert manifest["video2idx"]["test_public"] == {n: i for n, (_, i) in video2dur["test_public"].items()}


def test_separate_visual_files_are_l2_normalised_and_concatenated(tmp_path):
  names = ["a_clip", "b_clip"]
  jsonl = tmp_path / "tvr_val_release.jsonl"
  jsonl.write_text("".join(json.dumps({"vid_name": n, "duration": 6.0, "ts": [1.0, 4.0], "desc": f"a man {n}",
                                       "type": "v", "desc_id": i}) + "\n" for i, n in enumerate(names)))
  with h5py.File(tmp_path / "resnet.h5", "w") as r, h5py.File(tmp_path / "i3d.h5", "w") as i:
    for n in names:
      r[n] = _features(n, 4, 5, 2) * 3
      i[n] = _features(n, 5, 3, 3)  # one row more: the common prefix is kept and counted
  manifest = prepare_tvr(str(tmp_path / "out"), annotation_dir=str(tmp_path),
                         video_feature=[str(tmp_path / "resnet.h5"), str(tmp_path / "i3d.h5")], l2_normalize=True)
  assert manifest["video_dim"] == 8 and manifest["subtitle_dim"] == 0
  assert manifest["splits"]["val"]["repaired"]["visual files differ in rows: common prefix kept"] == 2
  data = prepared_data.open_prepared(str(tmp_path / "out"))
  for rec in data.builder("videos").as_dataset(split="val").as_numpy_iterator():
    n = rec["vid_name"].decode()
    a, b = _features(n, 4, 5, 2) * 3, _features(n, 5, 3, 3)[:4]
    want = np.concatenate([a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)], 1)
    np.testing.assert_allclose(rec["video"], want, rtol=1e-6)
