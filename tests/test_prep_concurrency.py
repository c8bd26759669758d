"""Two preparations into one out_dir: one writer at a time, and nothing published is lost.

A second run started while the first writes is made deterministic here: it runs
inside the first, from the first's feature reads (the moment a real second run
would start, hours into a TVR train split). Without the lock, with other inputs
the first run to finish deleted the other's build folder and the other then
published a dataset with shards missing; with the same inputs the two shared one
build folder and the later one cleared shards the other had just published.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

import helpers as dh
from data_prep import lock, tvr
from data_prep.records import DataError
from helpers import REPO_ROOT
from prep_helpers import assert_data_error, on_read, tree_bytes

MOCK = os.path.join(REPO_ROOT, "tests", "mock_bucket")


def _assert_complete(out: str, build_id: str, n_videos: int = 7, n_queries: int = 14) -> None:
  """The published dataset is `build_id`'s and every record of it reads back."""
  from hammer_jax.data.prepared_data import open_prepared, read_queries
  data = open_prepared(out)
  assert data.manifest["build_id"] == build_id
  info = data.manifest["splits"]["val"]
  shards = dh.shard_files(out, "videos", "val")
  assert [os.path.basename(p) for p in shards] == [
      f"videos-val.tfrecord-{i:05d}-of-{len(info['video_shard_lengths']):05d}"
      for i in range(len(info["video_shard_lengths"]))]
  assert [len(dh.tfrecord_offsets(p)) for p in shards] == info["video_shard_lengths"]
  assert sum(1 for _ in data.builder("videos").as_dataset(split="val")) == n_videos
  assert len(read_queries(data, "val")) == n_queries


def _second_run_inside_the_first(monkeypatch, run_second, after_reads: int = 3) -> dict:
  """Starts `run_second()` once, at the first run's (after_reads+1)-th feature read; records what it did."""
  state = {"busy": False, "result": None, "error": None, "published": None}

  def second(_name):
    if state["busy"] or state["result"] or state["error"]:
      return
    state["busy"] = True
    try:
      state["result"] = run_second()
      state["published"] = tree_bytes(state["out"])
    except DataError as e:
      state["error"] = e
    finally:
      state["busy"] = False

  on_read(monkeypatch, "tvr", after_reads, second)
  return state


@pytest.mark.parametrize("inputs", ["same", "other"])
def test_a_second_run_into_the_same_out_dir_is_refused(tmp_path, monkeypatch, inputs):
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)  # 4 video shards
  out = str(tmp_path / "out")
  second_args = dict(videos_per_shard=2, max_query_len=64 if inputs == "same" else 6)
  state = _second_run_inside_the_first(monkeypatch, lambda: tvr.prepare_tvr(out, **inp.kwargs(**second_args)))
  state["out"] = out
  first = tvr.prepare_tvr(out, **inp.kwargs(videos_per_shard=2))
  monkeypatch.undo()
  assert state["result"] is None, "the second run was not refused"
  err = state["error"]
  assert err is not None and err.path == out and err.field == "out_dir"
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(err) and "wait for it" in str(err)
  _assert_complete(out, first["build_id"])
  assert sorted(os.listdir(out)) == sorted(["prepared.json", os.path.basename(dh.data_folder(out))])  # Lock gone.


@pytest.mark.parametrize("inputs", ["same", "other"])
def test_without_the_lock_published_data_is_still_never_removed(tmp_path, monkeypatch, inputs):
  """Should two runs meet anyway (a filesystem or bucket where nothing locks): the later run refuses to
  delete or write inside the folder prepared.json names, and never publishes a build with shards missing."""
  monkeypatch.setattr(lock, "out_dir_lock", lambda out_dir: contextlib.nullcontext())
  inp = dh.TvrInputs(str(tmp_path / "in"), n_videos=7)
  out = str(tmp_path / "out")
  second_args = dict(videos_per_shard=2, max_query_len=64 if inputs == "same" else 6)
  state = _second_run_inside_the_first(monkeypatch, lambda: tvr.prepare_tvr(out, **inp.kwargs(**second_args)))
  state["out"] = out
  with pytest.raises(DataError) as e:
    tvr.prepare_tvr(out, **inp.kwargs(videos_per_shard=2))
  second = state["result"]
  assert second is not None and state["error"] is None  # Nothing stopped the second run here.
  problem = "published by another run" if inputs == "same" else "disappeared while it ran"
  assert_data_error(e, out, "<folder>", "out_dir", problem, "one preparation per --out_dir")
  assert tree_bytes(out) == state["published"]  # The second run's dataset, byte for byte.
  _assert_complete(out, second["build_id"])


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  """kill -9 leaves the lock file behind; its flock died with the process, so the next run proceeds."""
  inp = dh.TvrInputs(str(tmp_path / "in"))
  out = str(tmp_path / "out")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom data_prep import lock\nwith lock.out_dir_lock(sys.argv[1]):\n"
       "  print('locked', flush=True)\n  time.sleep(300)", out],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(DataError) as e:
      tvr.prepare_tvr(out, **inp.kwargs())
    assert_data_error(e, out, "<folder>", "out_dir", f"pid {holder.pid} on host {socket.gethostname()}",
                      "another data_prep run is writing here")
  finally:
    holder.kill()
    holder.wait()
  assert json.load(open(os.path.join(out, lock.LOCK_NAME)))["pid"] == holder.pid  # Left behind.
  m = tvr.prepare_tvr(out, **inp.kwargs())
  assert m["splits"]["val"]["num_videos"] == 4
  assert not os.path.exists(os.path.join(out, lock.LOCK_NAME))


_BUCKET_SCRIPT = """
import json, sys
from data_prep import lock
from data_prep.records import DataError
from hammer_jax import files
out = "mockgs://bucket/prepared"
with lock.out_dir_lock(out):
  print("marker", files.exists(out + "/.prepare.lock"), file=sys.stderr)
  try:
    with lock.out_dir_lock(out):
      print("not refused", file=sys.stderr)
  except DataError as e:
    print("refused:", e, file=sys.stderr)
print("marker after", files.exists(out + "/.prepare.lock"), file=sys.stderr)
files.atomic_write(out + "/.prepare.lock", json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
try:
  with lock.out_dir_lock(out):
    print("not refused", file=sys.stderr)
except DataError as e:
  print("refused:", e, file=sys.stderr)
"""


def test_a_bucket_out_dir_says_it_cannot_lock(tmp_path):
  """A `scheme://` out_dir: a notice that the bucket cannot be locked and what to do; a marker of a
  run elsewhere refuses with the object to delete should that run be gone."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([MOCK, REPO_ROOT]), MOCK_BUCKET_ROOT=str(tmp_path))
  p = subprocess.run([sys.executable, "-c", _BUCKET_SCRIPT], cwd=str(tmp_path), env=env, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  lines = [line for line in p.stderr.splitlines() if line.split(" ")[0] in ("notice:", "marker", "refused:",
                                                                              "not")]
  marker = "mockgs://bucket/prepared/.prepare.lock"
  assert lines[0].startswith("notice: mockgs://bucket/prepared: a bucket cannot be locked")
  assert marker in lines[0] and "one preparation per --out_dir at a time" in lines[0]
  assert lines[1] == "marker True"
  assert lines[2].startswith("refused: mockgs://bucket/prepared: <folder>: field 'out_dir': another data_prep run")
  assert f"delete {marker}" in lines[2]
  assert lines[3] == "marker after False"
  assert lines[4].startswith("refused:") and "pid 1 on host elsewhere" in lines[4] and f"delete {marker}" in lines[4]
  assert len(lines) == 5
