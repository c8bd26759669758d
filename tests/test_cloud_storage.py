"""Every file of a job on a bucket: prepare (and re-run) -> train (+ final evaluation) -> resume -> index ->
eval -> search on `mockgs://`.

`tests/mock_bucket/sitecustomize.py` registers a stand-in bucket scheme with
etils.epath in each process (as epath registers `gs://`), hands libraries the
URI (never the local folder, see its docstring) and makes any `open` / `os`
call on such a path fail, so these runs pass only if every job path goes
through hammer_jax.files or a library's own bucket client. The objects land in a local folder, which the test
then inspects.
"""

import glob
import json
import os
import subprocess
import sys

from helpers import REPO_ROOT

MOCK = os.path.join(REPO_ROOT, "tests", "mock_bucket")


def _run(root, *argv, timeout=600):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([MOCK, REPO_ROOT]), MOCK_BUCKET_ROOT=str(root),
             XLA_FLAGS="--xla_force_host_platform_device_count=1", TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, *argv], cwd=str(root), env=env, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, (argv, out.stderr[-4000:])
  return out


def test_prepare_train_eval_search_in_a_bucket(tmp_path):
  from data_prep import make_synthetic
  raw = tmp_path / "raw"                       # Inputs of preparation (h5 features) are local files.
  make_synthetic.make_synthetic_corpus(str(raw), num_train_videos=24, num_val_videos=6, num_test_videos=4,
                                       visual_dim=16, subtitle_dim=8, min_duration=9.0, max_duration=24.0,
                                       verbose=False)
  bucket = tmp_path / "objects"
  bucket.mkdir()
  _run(bucket, "-m", "data_prep.tvr", f"--annotation_dir={raw}", f"--video_feature={raw}/video_feature.h5",
       f"--subtitle_feature={raw}/sub_feature.h5", f"--video2dur_idx={raw}/tvr_video2dur_idx.json",
       "--out_dir=mockgs://bucket/prepared", "--videos_per_shard=8")
  prepared = bucket / "bucket" / "prepared"
  manifest = json.load(open(prepared / "prepared.json"))
  assert sorted(manifest["splits"]) == ["test_public", "train", "val"]
  assert glob.glob(str(prepared / manifest["data_folder"] / "videos" / "1.0.0" / "videos-train.tfrecord-*"))

  flags = [f"--config={REPO_ROOT}/configs/demo.py:tiny", "--workdir=mockgs://bucket/w",
           "--config.data.prepared_dir=mockgs://bucket/prepared", "--config.optim.num_steps=6",
           "--config.checkpoint_every_steps=3", "--config.log_every_steps=3", "--config.eval.every_steps=6",
           "--config.eval.max_queries_during_training=4", "--config.eval.final_eval=True"]
  trained = _run(bucket, "-m", "hammer_jax.main", *flags)
  assert "| VR (model) |" in trained.stdout
  w = bucket / "bucket" / "w"
  assert sorted(os.listdir(w / "checkpoints")) == ["3", "6"]
  assert json.load(open(w / "config.json"))["optim"]["num_steps"] == 6
  assert glob.glob(str(w / "tensorboard" / "events.out.tfevents.*"))
  for name in ("predictions.json", "metrics.json", "metrics.md", "timelines.png", "duration_buckets.md"):
    assert os.path.getsize(w / "eval" / "val_step6" / name) > 0, name
  assert os.path.exists(w / "eval" / "periodic_step6" / "predictions.json")

  # A re-run of the same preparation finds the published dataset complete and keeps it.
  before = {f: os.path.getmtime(f) for f in glob.glob(str(prepared / "**" / "*"), recursive=True)}
  rerun = _run(bucket, "-m", "data_prep.tvr", f"--annotation_dir={raw}", f"--video_feature={raw}/video_feature.h5",
               f"--subtitle_feature={raw}/sub_feature.h5", f"--video2dur_idx={raw}/tvr_video2dur_idx.json",
               "--out_dir=mockgs://bucket/prepared", "--videos_per_shard=8")
  assert "already complete" in rerun.stdout + rerun.stderr
  assert {f: os.path.getmtime(f) for f in glob.glob(str(prepared / "**" / "*"), recursive=True)} == before

  # Training resumes from the bucket's latest checkpoint.
  resumed = _run(bucket, "-m", "hammer_jax.main", *flags[:-3], "--config.optim.num_steps=9",
                 "--config.eval.final_eval=False")
  assert "from step 6" in resumed.stdout + resumed.stderr, (resumed.stdout + resumed.stderr)[-3000:]
  assert sorted(os.listdir(w / "checkpoints")) == ["3", "6", "9"]

  # The first-stage index (and its parts) built on the bucket; search then answers two-stage from it.
  _run(bucket, "-m", "hammer_jax.index", "--workdir=mockgs://bucket/w", "--videos_per_shard=2")
  assert glob.glob(str(w / "index" / "*_step9.npz")) and not glob.glob(str(w / "index" / "*.parts"))
  _run(bucket, "-m", "hammer_jax.eval", "--workdir=mockgs://bucket/w", "--split=test", "--step=6")
  assert json.load(open(w / "eval" / "test_public_step6" / "predictions.json"))["VR"]
  found = _run(bucket, "-m", "hammer_jax.search", "--workdir=mockgs://bucket/w", "--query=the dog runs", "--json",
               "--top_k=2")
  assert len(json.loads(found.stdout)) == 2
  # Nothing used the bucket path as a local one (an `os.makedirs("mockgs://...")` would leave `mockgs:` here).
  assert not glob.glob(str(tmp_path / "**" / "mockgs:*"), recursive=True)
  assert not os.path.exists(os.path.join(REPO_ROOT, "mockgs:"))
