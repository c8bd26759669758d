"""Learning is tested by learning: the product's model (MiniLM text branches) trained briefly beats chance.

One run of the real binary (`python -m hammer_jax.main --config=configs/demo.py`,
one CPU device, in a subprocess): the demo's model and corpus (300 training
videos, 30 val videos), 450 steps instead of 600, then the eval binary's
evaluation of the val split (`eval.final_eval`). Asserted:

* video retrieval itself: the VR loss over the last 100 steps below 0.85 ln(1+J)
  (1.0 is chance, and a collapsed VR head sits at exactly 1.0), and the spread of
  f(v, h) over the 30 val videos per val query (std over videos, mean over
  queries, from `predictions.json`) above 0.1 (a collapsed head: 0.001-0.004);
* val VR R@1 at least 3x chance and R@10 at least 20 points above it, VCMR R@10
  at IoU 0.5 at least 5x chance, TL mIoU at least 10 points above chance (chance
  levels: the corpus's `chance.json`), and typed queries through search find
  the planted moments.

Measured on this machine (2-core CPU, seed 0): see the closing numbers in
docs/training_dynamics.md ("The learning test").
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT
from helpers import read_scalars

# One worker runs every test of this file (pytest.ini: --dist loadscope), so the run happens once.

STEPS = 450
NEGATIVES = 2  # configs/demo.py
LEARNING_FLAGS = [
    "--config=configs/demo.py", f"--config.optim.num_steps={STEPS}", "--config.log_every_steps=25",
    f"--config.checkpoint_every_steps={STEPS}",
    # The per-objective gradient norms of the log (four extra backward passes every logged step, and their
    # compilation) are not asserted here: tests/test_train.py checks them.
    "--config.log_objective_grad_norms=false",
]


@pytest.fixture(scope="session")
def learned_workdir(tmp_path_factory):
  """The 450-step demo run, made once per test session even when several xdist workers ask for it.

  (pytest-xdist's documented pattern: the workers share the base temp folder's
  parent; the first one trains under a file lock, the others wait and reuse.)
  """
  import fcntl
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  workdir, done = str(root / "learned"), root / "learned.json"
  with open(root / "learned.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
      result = subprocess.run([sys.executable, "-m", "hammer_jax.main", f"--workdir={workdir}", *LEARNING_FLAGS],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
      assert result.returncode == 0, result.stderr[-4000:]
      done.write_text(json.dumps({"stdout": result.stdout}))
  return workdir, json.loads(done.read_text())["stdout"]


def _results(workdir):
  with open(os.path.join(workdir, "eval", f"val_step{STEPS}", "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(workdir, "data", "raw", "chance.json")) as f:
    chance = json.load(f)["val"]
  return metrics, chance


def test_video_retrieval_loss_leaves_chance(learned_workdir):
  workdir, _ = learned_workdir
  vr_loss = read_scalars(workdir, "vr")
  chance = math.log(1 + NEGATIVES)
  last = [v for s, v in vr_loss.items() if s > STEPS - 100]
  assert len(last) >= 4 and np.mean(last) < 0.85 * chance, (np.mean(last) / chance, vr_loss)
  loss = read_scalars(workdir, "loss")
  assert loss[max(loss)] < 0.6 * loss[min(loss)], loss


def test_video_retrieval_scores_rank_videos_not_tie_them(learned_workdir):
  """Per val query, f(v, h) over the 30 val videos: spread well above a collapsed head's ~0.003."""
  workdir, _ = learned_workdir
  with open(os.path.join(workdir, "eval", f"val_step{STEPS}", "predictions.json")) as f:
    vr = json.load(f)["VR"]
  spreads = [np.std([p[3] for p in entry["predictions"]]) for entry in vr]
  assert len(vr) == 150 and min(len(e["predictions"]) for e in vr) == 30
  assert np.mean(spreads) > 0.1, np.mean(spreads)
  # The batch diagnostic the training log shows agrees: the spread over each query's candidates grew.
  batch_spread = read_scalars(workdir, "vr_spread")
  assert batch_spread[max(batch_spread)] > 0.1, batch_spread


def test_video_retrieval_beats_chance(learned_workdir):
  metrics, chance = _results(learned_workdir[0])
  assert metrics["VR"]["r1"] >= 3 * chance["VR"]["R@1"], (metrics["VR"], chance["VR"])
  assert metrics["VR"]["r10"] >= chance["VR"]["R@10"] + 20.0, (metrics["VR"], chance["VR"])


def test_the_first_stage_finds_the_video_in_its_top_10(learned_workdir):
  """The dual-encoder first stage (trained jointly) lists the query's video in its top 10 of 30.

  Chance is the VR R@10 of a random ranking (33%); the margin asked is 25 points
  (the 450-step run of the suite reached 68.0).
  """
  metrics, chance = _results(learned_workdir[0])
  assert metrics["first_stage"]["recall@10"] >= chance["VR"]["R@10"] + 25.0, (metrics["first_stage"], chance["VR"])
  assert metrics["first_stage"]["recall@1"] >= 3 * chance["VR"]["R@1"], metrics["first_stage"]


def test_moment_retrieval_and_localisation_beat_chance(learned_workdir):
  metrics, chance = _results(learned_workdir[0])
  vcmr, vcmr_chance = metrics["VCMR"]["0.5-r10"], chance["VCMR"]["IoU=0.5"]["R@10"]
  assert vcmr >= 5 * vcmr_chance, (vcmr, vcmr_chance)
  assert metrics["TL"]["mIoU"] >= chance["TL_mIoU"] + 10.0, (metrics["TL"], chance["TL_mIoU"])


def test_the_run_prints_the_summary_table(learned_workdir):
  _, stdout = learned_workdir
  assert "| VR (model) |" in stdout and "| VR (chance) |" in stdout and "VCMR IoU>=0.5 (model)" in stdout


def test_search_finds_the_planted_moments(learned_workdir):
  """Typed val queries (the planted moments' descriptions): the planted video and moment come back on top.

  The first two val queries of each of the 30 val videos (60 of the 150: a search costs about a second on
  this CPU). The 450-step run found the video in the top 10 for 48 of them (80%; 69% over all 150) and the
  moment at IoU >= 0.5 for 17 (28%; 25% over all 150).
  """
  from hammer_jax.retrieval import metrics
  from hammer_jax.data import prepared_data
  from hammer_jax import search
  workdir, _ = learned_workdir
  searcher = search.MomentSearcher(workdir)
  queries = prepared_data.read_queries(searcher.data, searcher.split)
  video_hits, moment_hits = 0, 0
  asked, per_video = [], collections.Counter()
  for i, name in enumerate(queries.vid_name):
    per_video[name] += 1
    if per_video[name] <= 2:
      asked.append(i)
  assert len(asked) == 60, len(asked)
  n = len(asked)
  for i in asked:
    moments = searcher.search(queries.desc[i], top_k=10)
    for m in moments:
      if m.vid_name == queries.vid_name[i]:
        video_hits += 1
        iou = metrics.temporal_iou(np.array([m.st, m.ed]), np.array([queries.st[i], queries.ed[i]]))
        moment_hits += float(iou) >= 0.5
  _, chance = _results(workdir)
  # Top 10 of 30 videos: chance 33%; a moment at IoU >= 0.5 in them: chance 1.75% (VCMR R@10).
  assert 100 * video_hits / n >= chance["VR"]["R@10"] + 15.0, (video_hits, n)
  assert 100 * moment_hits / n >= 5 * chance["VCMR"]["IoU=0.5"]["R@10"], (moment_hits, n)
