"""The README's demo command end to end at a smaller size: prepare, train, eval, search, re-run.

The command is read from the README (so the test runs what a new user runs),
with `.venv/bin/python` replaced by this interpreter and size overrides added:
a 16-video corpus and 4 training steps with the real MiniLM text branches.
Learning itself is tested at full length in tests/test_learning.py.
"""

from __future__ import annotations

import json
import os

import doc_commands as dc

SMALL = ["--config.data.synthetic.num_train_videos=16", "--config.data.synthetic.num_val_videos=6",
         "--config.data.synthetic.num_test_videos=6", "--config.optim.num_steps=4",
         "--config.optim.batch_size=4", "--config.checkpoint_every_steps=4", "--config.log_every_steps=2"]


def _demo_command() -> list[str]:
  for command in dc.commands("README.md"):
    if "hammer_jax.main" in command.argv and any(a.startswith("--config=configs/demo.py") for a in command.argv):
      return list(command.argv)
  raise AssertionError("README.md has no demo command")


def test_demo_pipeline_end_to_end(tmp_path):
  argv = _demo_command()
  assert argv[0] == ".venv/bin/python" and argv[1:3] == ["-m", "hammer_jax.main"]
  workdir_flag = next(a for a in argv if a.startswith("--workdir="))
  workdir = tmp_path / workdir_flag.split("=", 1)[1]
  env = dc.scratch_repo(tmp_path)
  command = [*argv, *SMALL]

  first = "\n".join(dc.run_as_written(command, tmp_path, env))
  # Prepared the corpus, trained, evaluated, and printed recalls beside chance and where things are.
  assert "synthetic TVR corpus in" in first
  assert "| VR (model) |" in first and "| VR (chance) |" in first and "| VCMR IoU>=0.5 (chance) |" in first
  for line in ("Checkpoints:", "TensorBoard:", "Predictions:", "Plots:"):
    assert line in first
  # The demo logs each objective's gradient norms (configs/base.py log_objective_grad_norms; the learning
  # test turns them off to save its time, so this is the run that shows the training loop computes them).
  assert "|g vr| text" in first and "|g tl| text" in first
  out = workdir / "eval" / "val_step4"
  for name in ("metrics.json", "predictions.json", "timelines.png", "duration_buckets.png"):
    assert (out / name).stat().st_size > 0, name
  assert (workdir / "checkpoints" / "4").is_dir()
  assert os.listdir(workdir / "tensorboard")

  # Search over the demo's corpus with the trained checkpoint.
  printed, _ = dc.run_as_written(["python", "-m", "hammer_jax.search", f"--workdir={workdir}", "--query",
                  "the dog runs in the kitchen", "--top_k=3", "--json"], tmp_path, env)
  moments = json.loads(printed)
  assert len(moments) == 3 and all(0 <= m["st"] <= m["ed"] for m in moments)

  # Re-running reuses the corpus and the checkpoint: nothing is rebuilt or retrained.
  second = "\n".join(dc.run_as_written(command, tmp_path, env))
  assert "is complete for these arguments: nothing to do" in second
  assert "Resumed from step 4" in second
  assert "step 1/4" not in second
