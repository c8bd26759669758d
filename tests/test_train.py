"""Training: schedule, configs, loss falls, kill -9 / SIGTERM resume, NaN guard."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import activitynet, base, tvr
from helpers import REPO_ROOT, checkpoint_steps, read_scalars, restored_params, tiny_config
from hammer_jax import run_config
from hammer_jax.data import input_pipeline
from hammer_jax.model import build
from hammer_jax.train import diagnostics, loop, optimizer
from hammer_jax.train import state as ts


def test_schedule_matches_the_paper():
  c = tvr.get_config()
  c.optim.num_steps = 1000
  lr = optimizer.learning_rate_schedule(c.optim)
  assert float(lr(0)) == 0.0
  assert float(lr(50)) == pytest.approx(1e-4, rel=1e-5)          # halfway through the warm-up
  assert float(lr(100)) == pytest.approx(2e-4, rel=1e-5)         # 10%: the max LR
  assert float(lr(499)) == pytest.approx(2e-4, rel=1e-5)
  assert float(lr(500)) == pytest.approx(2e-5, rel=1e-5)         # 50%: 0.1x
  assert float(lr(749)) == pytest.approx(2e-5, rel=1e-5)
  assert float(lr(750)) == pytest.approx(2e-6, rel=1e-5)         # 75%: 0.01x
  assert float(lr(999)) == pytest.approx(2e-6, rel=1e-5)


def _update_sizes(params, name: str, values) -> dict[float, dict]:
  """value -> |first element| of each parameter's third update by configs/tvr.py's optimizer with
  `optim.<name>` = value (every gradient is ones)."""
  c = tvr.get_config()
  c.optim.num_steps, c.optim.warmup_fraction = 10, 0.1
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  sizes = {}
  for value in values:
    c.optim[name] = value
    tx = optimizer.make_optimizer(c.optim)
    state = tx.init(params)
    for _ in range(3):  # Past step 0, where the warm-up rate is 0.
      updates, state = tx.update(grads, state, params)
    sizes[value] = jax.tree_util.tree_map(lambda u: float(jnp.abs(u[0])), updates)
  return sizes


def test_new_layer_lr_multiplier_scales_only_the_layers_trained_from_scratch():
  steps = _update_sizes({"embeddings": {"w": jnp.ones(3)}, "mlm_head": {"b": jnp.ones(3)},
                         "clip_encoder": {"text_branch": {"k": jnp.ones(3)}, "video_branch_visual": {"k": jnp.ones(3)}},
                         "vr_head": {"kernel": jnp.ones(3)}}, "new_layer_lr_multiplier", (1.0, 10.0))
  for path in (("embeddings", "w"), ("mlm_head", "b"), ("clip_encoder", "text_branch", "k")):
    assert _at(steps[1.0], path) > 0
    assert _at(steps[10.0], path) == pytest.approx(_at(steps[1.0], path))
  for path in (("clip_encoder", "video_branch_visual", "k"), ("vr_head", "kernel")):
    assert _at(steps[10.0], path) == pytest.approx(10 * _at(steps[1.0], path))


def test_word_embedding_lr_multiplier_scales_only_the_word_embedding_table():
  steps = _update_sizes({"embeddings": {"word_embeddings": {"embedding": jnp.ones(3)},
                                        "position_embeddings": jnp.ones(3)},
                         "clip_encoder": {"text_branch": {"k": jnp.ones(3)}}, "vr_head": {"kernel": jnp.ones(3)}},
                        "word_embedding_lr_multiplier", (1.0, 30.0))
  table = ("embeddings", "word_embeddings", "embedding")
  assert _at(steps[30.0], table) == pytest.approx(30 * _at(steps[1.0], table))
  for path in (("embeddings", "position_embeddings"), ("clip_encoder", "text_branch", "k"), ("vr_head", "kernel")):
    assert _at(steps[1.0], path) > 0 and _at(steps[30.0], path) == pytest.approx(_at(steps[1.0], path))


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_paper_hyperparameters_are_the_defaults():
  t, a = tvr.get_config(), activitynet.get_config()
  assert (t.optim.batch_size, t.optim.lr, t.data.max_frames) == (128, 2e-4, 96)
  assert (a.optim.batch_size, a.optim.lr, a.data.max_frames, a.data.clip_len) == (64, 4e-5, 128, 32)
  for c in (t, a):
    assert (c.loss.vr_weight, c.loss.tl_weight, c.loss.mlm_weight) == (1.0, 5.0, 0.1)
    assert (c.model.text_layers, c.model.video_layers) == (5, 1)
    assert c.optim.warmup_fraction == 0.1 and tuple(c.optim.decay_boundaries) == (0.5, 0.75)
    assert tuple(c.optim.decay_factors) == (0.1, 0.01)
    assert c.model.cross_modal and c.model.clip_position_embedding and not c.model.share_encoders
    assert c.optim.new_layer_lr_multiplier == 1.0  # One rate for every parameter, as the paper.
  assert t.data.use_subtitles and not a.data.use_subtitles


def test_variants_reproduce_the_ablations():
  c = activitynet.get_config("flat")
  assert c.model.flat
  c = activitynet.get_config("objectives=vr+tl+fm,weights=1:10:0.1,no_cross_modal,clip=64,share_encoders,"
                             "no_clip_position")
  assert (c.loss.use_vr, c.loss.use_tl, c.loss.use_frame_mlm, c.loss.use_clip_mlm) == (True, True, True, False)
  assert c.loss.tl_weight == 10.0 and not c.model.cross_modal and c.model.share_encoders
  assert c.data.clip_len == c.model.clip_len == 64 and not c.model.clip_position_embedding
  with pytest.raises(ValueError, match="unknown config variant"):
    tvr.get_config("clip_len=32")
  with pytest.raises(ValueError, match="multiple of clip_len"):
    tvr.get_config("clip=40")


def test_mistyped_override_is_an_error(tmp_path):
  out = subprocess.run([sys.executable, "-m", "hammer_jax.main", "--config=configs/demo.py:tiny",
                        f"--workdir={tmp_path}", "--config.optim.lrr=1e-3"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "lrr" in out.stderr
  c = base.get_base_config()
  c.lock()
  with pytest.raises(AttributeError):
    c.optim.lrr = 1.0


def test_batch_must_divide_over_devices():
  mesh = ts.create_mesh()
  assert ts.check_batch_size(16, mesh) == 16
  with pytest.raises(ValueError, match="does not divide over 8 devices"):
    ts.check_batch_size(12, mesh)


def test_tiny_training_loss_falls_on_eight_devices(synthetic_prepared, tmp_path):
  """Also the periodic evaluation: validation loss and corpus retrieval on the first 6 val queries."""
  c = tiny_config(synthetic_prepared.path, **{"optim.num_steps": 60, "optim.lr": 3e-3,
                                               "log_every_steps": 10, "eval.every_steps": 30,
                                               "eval.max_queries_during_training": 6,
                                               "checkpoint_every_steps": 60})
  state = loop.train_and_evaluate(c, str(tmp_path))
  assert len(jax.devices()) == 8 and int(state.step) == 60
  loss = read_scalars(str(tmp_path), "loss")
  assert sorted(loss) == [1, 10, 20, 30, 40, 50, 60]
  # Windows of 10 steps: the last two average at least 10% below the first two.
  assert (loss[50] + loss[60]) / 2 < 0.9 * (loss[1] + loss[10]) / 2, loss
  assert sorted(read_scalars(str(tmp_path), "val_loss")) == [30, 60]
  assert np.isfinite(read_scalars(str(tmp_path), "val_loss")[60])
  for step in (30, 60):
    sub = json.load(open(tmp_path / "eval" / f"periodic_step{step}" / "predictions.json"))
    assert len(sub["VCMR"]) == len(sub["VR"]) == 6
    metrics = json.load(open(tmp_path / "eval" / f"periodic_step{step}" / "metrics.json"))
    assert read_scalars(str(tmp_path), "eval/VR/r1")[step] == metrics["VR"]["r1"]
    assert read_scalars(str(tmp_path), "eval/TL/mIoU")[step] == pytest.approx(metrics["TL"]["mIoU"])
  assert os.path.exists(os.path.join(tmp_path, "config.json"))
  assert run_config.load_config(str(tmp_path)).optim.num_steps == 60


def test_the_whole_config_goes_to_tensorboard_as_hparams():
  c = tiny_config()
  flat = loop.hparams(c)
  leaves = []

  def walk(prefix, node):
    for key, value in node.items():
      (walk(f"{prefix}{key}.", value) if hasattr(value, "items") else leaves.append(f"{prefix}{key}"))

  walk("", c)
  assert set(flat) == set(leaves)
  assert flat["optim.lr"] == c.optim.lr and flat["model.bert.hidden_size"] == 32
  assert flat["data.synthetic.num_train_videos"] == 40 and flat["optim.decay_boundaries"] == "(0.5, 0.75)"


def _main_cmd(workdir, prepared, *flags):
  return [sys.executable, "-m", "hammer_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data.prepared_dir={prepared}", *flags]


def test_kill_9_and_resume_reaches_the_same_parameters(synthetic_prepared, tmp_path, caplog):
  # 12 steps, a checkpoint every 3: killed as soon as checkpoint 6 is committed (3 and 6 finished, training on).
  # A save of the tiny model's state takes about a second (host copy, checkpointing._savable), more under load.
  steps_total = 12
  flags = [f"--config.optim.num_steps={steps_total}", "--config.checkpoint_every_steps=3",
           "--config.eval.every_steps=0", "--config.log_every_steps=1"]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_main_cmd(killed, synthetic_prepared.path, *flags), cwd=REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not os.path.exists(killed / "checkpoints" / "6") and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = checkpoint_steps(killed)
  assert steps and 6 <= steps[-1] < steps_total, f"the run was not interrupted after step 6 ({steps})"
  # Restart after kill -9: resumes from the last finished checkpoint and completes.
  c = run_config.load_config(str(killed))
  caplog.set_level(logging.INFO)
  loop.train_and_evaluate(c, str(killed))
  resumed_from = [int(m) for m in re.findall(r"Resumed from step (\d+)", caplog.text)]
  assert resumed_from == [steps[-1]], f"resumed from {resumed_from}, the last finished checkpoint is {steps[-1]}"
  # The same run uninterrupted (saving only at its end: checkpoints do not change the trajectory).
  straight = tmp_path / "straight"
  c = run_config.load_config(str(killed))
  c.checkpoint_every_steps = steps_total
  loop.train_and_evaluate(c, str(straight))
  a, b = restored_params(str(killed), steps_total), restored_params(str(straight), steps_total)
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
  assert max(jax.tree_util.tree_leaves(diffs)) <= 1e-6


def test_sigterm_saves_the_current_step(synthetic_prepared, tmp_path):
  """And exits within 10 s of the signal (a preempted Cloud TPU VM has about 30 s), nothing lost."""
  flags = ["--config.optim.num_steps=400", "--config.checkpoint_every_steps=1000", "--config.eval.every_steps=0",
           "--config.log_every_steps=1"]
  proc = subprocess.Popen(_main_cmd(tmp_path, synthetic_prepared.path, *flags), cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen, signalled = "", None
  for line in proc.stdout:
    seen += line
    if "step 3/400" in line:
      proc.send_signal(signal.SIGTERM)
      signalled = time.monotonic()
      break
  assert signalled is not None, seen[-3000:]
  # The rest of the output, each line with the time it came: the checkpoint line's time is when the save ended.
  lines = []
  reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), x) for x in proc.stdout), daemon=True)
  reader.start()
  proc.wait(timeout=240)
  exited = time.monotonic()
  reader.join(timeout=30)
  seen += "".join(x for _, x in lines)
  exit_seconds = exited - signalled
  assert proc.returncode == 0, seen[-3000:]
  saved = [(t, int(m.group(1))) for t, x in lines if (m := re.search(r"Preempted: checkpoint saved at step (\d+)", x))]
  assert len(saved) == 1, seen[-3000:]
  # The line comes once the checkpoint is committed (loop.py); what follows is the teardown, which must not
  # wait on anything (docs/running.md: the exit follows within seconds; 10 s here, with the suite's load).
  assert exited - saved[0][0] < 10, f"{exited - saved[0][0]:.1f} s from the checkpoint line to exit\n{seen[-3000:]}"
  # The step to finish, its checkpoint to be committed, the process to end: about 5 s on an idle 2-core
  # machine, 15 s with the suite's other jobs on the same cores. It used to sleep for up to a minute more
  # in the tf.data iterator's teardown (hammer_jax/startup.py, finish).
  assert exit_seconds < 30, f"{exit_seconds:.1f} s from SIGTERM to exit\n{seen[-3000:]}"
  steps = checkpoint_steps(tmp_path)
  assert len(steps) == 1 and 3 <= steps[0] < 400 and steps[0] == saved[0][1]
  params = restored_params(tmp_path, steps[0])
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  # Nothing written before the exit is lost: the last log line and every step's TensorBoard scalar.
  assert f"Done: step {steps[0]} of 400" in seen
  assert sorted(read_scalars(str(tmp_path), "loss")) == list(range(1, steps[0] + 1))
  # Each logged step is one console line (the TensorBoard writer prints nothing of its own).
  assert seen.count("step 2/400  loss") == 1 and "grad_norm=" not in seen


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthetic_prepared, tmp_path,
                                                                          monkeypatch):
  original = input_pipeline.TrainBatches.__next__

  def poisoned(self):
    batch = original(self)
    if self.step > 4:  # the 5th batch onwards
      batch["video"] = batch["video"] * np.nan
    return batch

  monkeypatch.setattr(input_pipeline.TrainBatches, "__next__", poisoned)
  c = tiny_config(synthetic_prepared.path, **{"optim.num_steps": 10, "checkpoint_every_steps": 2,
                                               "log_every_steps": 1, "eval.every_steps": 0})
  with pytest.raises(loop.NonFiniteLossError, match="at step 5;.*Last good checkpoint: step 4"):
    loop.train_and_evaluate(c, str(tmp_path))
  assert checkpoint_steps(tmp_path)[-1] == 4


def test_vr_score_spread_is_the_std_over_each_querys_real_candidates():
  scores = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 9.0], [4.0, 0.0, 0.0]], np.float32)
  batch = {"neg_mask": np.array([[1, 1], [1, 0], [1, 1]], np.float32), "example_mask": np.array([1, 1, 0])}
  want = np.mean([np.std([1.0, 3.0, 5.0]), np.std([2.0, 2.0])])  # Row 2 is padding; row 1's 9 is masked.
  np.testing.assert_allclose(diagnostics.vr_score_spread(jnp.asarray(scores), batch), want, rtol=1e-6)


def test_objective_grad_norms_equal_each_weighted_objectives_own_gradient():
  """grad/<objective>/<group> is the norm of d(weight * objective)/d(params of that group)."""
  from jax.sharding import Mesh
  from hammer_jax.model import losses
  from helpers import SUBTITLE_DIM, VIDEO_DIM, fast_jit, quick_params, random_batch
  from helpers import tiny_model_config as model_tiny_config
  c = model_tiny_config()
  c.loss.use_dual_encoder = True
  model = build.create_model(c, VIDEO_DIM, SUBTITLE_DIM)
  batch = random_batch(c, 4)
  params = quick_params(model, batch)["params"]
  mesh = Mesh(np.array(jax.devices()[:1]), (ts.DATA_AXIS,))
  shardings = ts.TrainState(step=None, params=jax.tree_util.tree_map(lambda _: ts.replicated(mesh), params),
                            opt_state=None)
  rng = jax.random.key(0)
  got = jax.device_get(diagnostics.make_objective_grad_norms(model, c, shardings, mesh)(params, batch, rng))
  assert set(got) == {f"grad/{o}/{g}" for o in ("vr", "tl", "mlm", "dual_encoder") for g in diagnostics.SHARED_GROUPS}

  @fast_jit
  def direct(p):
    def objective(p, name, weight):
      out = model.apply({"params": p}, batch, deterministic=False, rngs={"dropout": rng})
      return c.loss[weight] * losses.hammer_loss(out, batch, c.loss)[1][name]
    return {name: jax.grad(objective)(p, name, weight) for name, weight in diagnostics.OBJECTIVE_WEIGHTS.items()}

  for name, grads in direct(params).items():
    for group in diagnostics.SHARED_GROUPS:
      leaves = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
                if build.parameter_group([k.key for k in path]) == group]
      want = np.sqrt(sum(float(np.sum(np.square(g))) for g in leaves))
      np.testing.assert_allclose(got[f"grad/{name}/{group}"], want, rtol=2e-3, atol=1e-6)
  # The dual-encoder head reads no cross-modal layer: it sends nothing there; TL shapes every group.
  assert got["grad/dual_encoder/cross_modal"] == 0.0 and got["grad/dual_encoder/video"] > 0
  assert min(got[f"grad/tl/{g}"] for g in diagnostics.SHARED_GROUPS) > 0
