"""Learning is tested by learning: the product's model (MiniLM text branches) trained briefly beats chance.

One run of the README's demo command as written (`python -m hammer_jax.main
--config=configs/demo.py --workdir=workdir/demo`, one CPU device, in a
subprocess): the demo's model and corpus (300 training videos, 30 val videos),
450 steps instead of 600, then the eval binary's evaluation of the val split
(`eval.final_eval`). The same run is the demo's end-to-end test: what it prints
and writes, search over its corpus, and a re-run that rebuilds nothing. Asserted:

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

import numpy as np
import pytest

import doc_commands as dc
from helpers import read_scalars

# One worker runs every test of this file (pytest.ini: --dist loadscope), so the run happens once.

STEPS = 450
NEGATIVES = 2  # configs/demo.py
LEARNING_FLAGS = [
    f"--config.optim.num_steps={STEPS}", "--config.log_every_steps=25", f"--config.checkpoint_every_steps={STEPS}",
    # The per-objective gradient norms of the log (four extra backward passes every logged step, and their
    # compilation) are not asserted here: tests/test_train.py checks them.
    "--config.log_objective_grad_norms=false",
]


def _demo_command() -> list[str]:
  """The README's demo command (what a new user runs), with `.venv/bin/python` as written."""
  for command in dc.commands("README.md"):
    if "hammer_jax.main" in command.argv and any(a.startswith("--config=configs/demo.py") for a in command.argv):
      argv = list(command.argv)
      assert argv[0] == ".venv/bin/python" and argv[1:3] == ["-m", "hammer_jax.main"], argv
      return argv
  raise AssertionError("README.md has no demo command")


@pytest.fixture(scope="session")
def learned_workdir(tmp_path_factory):
  """The 450-step demo run: (workdir, stdout, scratch repo root, environment), made once per test session.

  Made once even when several xdist workers ask for it (pytest-xdist's
  documented pattern: the workers share the base temp folder's parent; the first
  one trains under a file lock, the others wait and reuse).
  """
  import fcntl
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  repo, done = root / "demo_repo", root / "learned.json"
  argv = _demo_command()
  workdir = repo / next(a for a in argv if a.startswith("--workdir=")).split("=", 1)[1]
  with open(root / "learned.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      repo.mkdir()
      env = dc.scratch_repo(repo)
      stdout, _ = dc.run_as_written([*argv, *LEARNING_FLAGS], repo, env, timeout=1800)
      done.write_text(json.dumps({"stdout": stdout}))
  return str(workdir), json.loads(done.read_text())["stdout"], repo, dc.scratch_env()


def _results(workdir):
  with open(os.path.join(workdir, "eval", f"val_step{STEPS}", "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(workdir, "data", "raw", "chance.json")) as f:
    chance = json.load(f)["val"]
  return metrics, chance


def test_video_retrieval_loss_leaves_chance(learned_workdir):
  workdir = learned_workdir[0]
  vr_loss = read_scalars(workdir, "vr")
  chance = math.log(1 + NEGATIVES)
  last = [v for s, v in vr_loss.items() if s > STEPS - 100]
  assert len(last) >= 4 and np.mean(last) < 0.85 * chance, (np.mean(last) / chance, vr_loss)
  loss = read_scalars(workdir, "loss")
  assert loss[max(loss)] < 0.6 * loss[min(loss)], loss


def test_video_retrieval_scores_rank_videos_not_tie_them(learned_workdir):
  """Per val query, f(v, h) over the 30 val videos: spread well above a collapsed head's ~0.003."""
  workdir = learned_workdir[0]
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
  stdout = learned_workdir[1]
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
  workdir = learned_workdir[0]
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


def test_the_demo_writes_what_it_prints_and_reruns_without_rebuilding(learned_workdir):
  """The README demo's outputs, search over its corpus, and the same command again: nothing rebuilt or retrained."""
  workdir, stdout, repo, env = learned_workdir
  assert "synthetic TVR corpus in" in stdout
  for line in ("Checkpoints:", "TensorBoard:", "Predictions:", "Plots:", "| VCMR IoU>=0.5 (chance) |"):
    assert line in stdout, line
  out = os.path.join(workdir, "eval", f"val_step{STEPS}")
  for name in ("metrics.json", "predictions.json", "timelines.png", "duration_buckets.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(STEPS))) and os.listdir(os.path.join(workdir,
                                                                                                      "tensorboard"))
  printed, _ = dc.run_as_written(["python", "-m", "hammer_jax.search", f"--workdir={workdir}", "--query",
                                  "the dog runs in the kitchen", "--top_k=3", "--json"], repo, env)
  moments = json.loads(printed)
  assert len(moments) == 3 and all(0 <= m["st"] <= m["ed"] for m in moments)
  # Last in the module: the re-run rewrites the final evaluation the tests above read (one worker runs them all).
  second = "\n".join(dc.run_as_written([*_demo_command(), *LEARNING_FLAGS], repo, env, timeout=1800))
  assert "is complete for these arguments: nothing to do" in second
  assert f"Resumed from step {STEPS}" in second
