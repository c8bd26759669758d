"""The documented multi-process launch, run as documented: two `hammer_jax.main` / `hammer_jax.eval` processes.

docs/running.md's local two-process commands (`JAX_PLATFORMS=cpu python -m
hammer_jax.main ... --coordinator_address=127.0.0.1:PORT --num_processes=2
--process_id=I`) are what `job_argv` builds; tests/test_docs.py checks that the
two agree. With `data.num_readers=2` the global batches do not depend on the
number of processes, so a two-process job, preempted (SIGTERM to one host) and
resumed, must end with the parameters of one uninterrupted process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import REPO_ROOT, checkpoint_steps, read_scalars, restored_params
from multihost import free_port

STEPS = 10
ENV = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}


def job_argv(binary: str, flags, port: int, process_id: int, num_processes: int = 2) -> list[str]:
  """One process's command line, as docs/running.md writes it."""
  return [sys.executable, "-m", binary, *flags, f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={num_processes}", f"--process_id={process_id}"]


def train_flags(workdir, prepared):
  return ["--config=configs/demo.py:tiny", f"--workdir={workdir}", f"--config.data.prepared_dir={prepared}",
          f"--config.optim.num_steps={STEPS}", "--config.checkpoint_every_steps=1000", "--config.eval.every_steps=0",
          "--config.log_every_steps=1", "--config.data.num_readers=2", "--config.optim.optimizer=sgd"]


def _env(devices: int) -> dict:
  return dict(os.environ, **ENV, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _start_job(binary, flags, devices_per_process=2):
  port = free_port()
  return [subprocess.Popen(job_argv(binary, flags, port, pid), cwd=REPO_ROOT, env=_env(devices_per_process),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]


def _wait(procs, timeout=600):
  logs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return logs


@pytest.fixture(scope="module")
def one_process_run(synthetic_prepared, tmp_path_factory):
  """The reference: one process on 4 devices, uninterrupted."""
  workdir = tmp_path_factory.mktemp("one_process")
  out = subprocess.run([sys.executable, "-m", "hammer_jax.main", *train_flags(workdir, synthetic_prepared.path)],
                       cwd=REPO_ROOT, env=_env(4), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return str(workdir)


def test_two_processes_preempted_and_resumed_match_one_process(synthetic_prepared, one_process_run, tmp_path):
  workdir = tmp_path / "job"
  flags = train_flags(workdir, synthetic_prepared.path)
  procs = _start_job("hammer_jax.main", flags)
  seen = ""
  for line in procs[1].stdout:  # SIGTERM to the second host only, once it is training.
    seen += line
    if "step 3/" in line:
      procs[1].send_signal(signal.SIGTERM)
      break
  t0 = time.time()
  rest = procs[1].communicate(timeout=600)[0]
  first = procs[0].communicate(timeout=600)[0]
  assert time.time() - t0 < 60
  assert procs[0].returncode == procs[1].returncode == 0, (first[-3000:], (seen + rest)[-3000:])
  assert "Preempted" in first and "Preempted" in rest          # both hosts stopped, at the same step
  stopped = checkpoint_steps(workdir)
  assert len(stopped) == 1 and 3 <= stopped[0] < STEPS, stopped

  logs = _wait(_start_job("hammer_jax.main", flags))           # the same command on every host resumes
  assert all(f"Resumed from step {stopped[0]}" in log for log in logs)
  assert checkpoint_steps(workdir)[-1] == STEPS
  # The same losses at every step, before and after the preemption...
  one, two = read_scalars(one_process_run, "loss"), read_scalars(workdir, "loss")
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
  # ...and every parameter element. SGD (--config.optim.optimizer=sgd): where the loss is flat (a bias
  # added to every attention key, a vector added to every class of a softmax head) the gradient is
  # rounding noise, which Adam would scale to a full step (~lr); SGD keeps it at lr x noise.
  a, b = restored_params(one_process_run, STEPS), restored_params(workdir, STEPS)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-5)


def test_two_process_eval_writes_the_one_process_predictions(one_process_run, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(one_process_run, workdir)
  out = subprocess.run([sys.executable, "-m", "hammer_jax.eval", f"--workdir={workdir}"], cwd=REPO_ROOT,
                       env=_env(2), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  d = workdir / "eval" / f"val_step{STEPS}"
  single = json.load(open(d / "predictions.json"))
  single_metrics = json.load(open(d / "metrics.json"))
  shutil.rmtree(d)
  logs = _wait(_start_job("hammer_jax.eval", [f"--workdir={workdir}"]))
  assert all("JAX process" in log and "of 2 (flags)" in log for log in logs)
  both = json.load(open(d / "predictions.json"))
  assert json.load(open(d / "metrics.json")) == single_metrics
  assert both["video2idx"] == single["video2idx"]
  for task in ("VCMR", "SVMR", "VR"):
    assert [e["desc_id"] for e in both[task]] == [e["desc_id"] for e in single[task]]
    for x, y in zip(both[task], single[task]):
      np.testing.assert_allclose(np.array(x["predictions"]), np.array(y["predictions"]), rtol=1e-5, atol=1e-6)
