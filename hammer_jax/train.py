"""The multi-task training loop: `train_and_evaluate(config, workdir)`.

One linear function, big_vision style: data -> model -> sharded state (fresh or
restored) -> jitted train step with donated state -> loop with logging,
validation loss, checkpoints, preemption and a NaN guard. The loss is Eq. 14:
`vr_weight * l_VR + tl_weight * l_TL + mlm_weight * l_MLM` (losses.py).

Reproducibility: the data order, MLM masks and negatives are functions of
(seed, step) (input_pipeline.py) and dropout uses `fold_in(rng, step)`, so a run
restored from step k continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from hammer_jax import checkpointing, demo_data, hammer, input_pipeline, losses, optimizer, pretrained
from hammer_jax import prepared_data
from hammer_jax import train_state as ts


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


def open_data(config, workdir: str, *, verbose: bool = True) -> prepared_data.PreparedData:
  """The configured prepared data; the demo builds its synthetic corpus on first use."""
  if config.data.source == "synthetic" and not config.data.prepared_dir:
    return demo_data.ensure_synthetic_prepared(
        os.path.join(workdir, "data"), synthetic=dict(config.data.synthetic),
        text_checkpoint=config.model.text_checkpoint or pretrained.DEFAULT_CHECKPOINT,
        verbose=verbose and jax.process_index() == 0)
  return prepared_data.open_prepared(config.data.prepared_dir)


def check_data_fits(data: prepared_data.PreparedData, config) -> None:
  """Refuses data tokenised with another vocabulary than the model's text checkpoint."""
  checkpoint = config.model.text_checkpoint
  if checkpoint:
    data.check_vocabulary(pretrained.vocab_fingerprint(checkpoint), checkpoint)
  elif int(data.manifest["vocab_size"]) > config.model.bert.vocab_size:
    raise prepared_data.PreparedDataError(
        f"{data.path}: vocabulary of {data.manifest['vocab_size']} tokens exceeds the model's "
        f"{config.model.bert.vocab_size}")


def in_batch_retrieval_accuracy(vr_scores, batch):
  """Fraction of queries whose positive video (column 0) outscores all its negatives.

  Chance is 1 / (1 + num_negatives) when every negative is valid.
  """
  neg = jnp.where(batch["neg_mask"] > 0, vr_scores[:, 1:], -jnp.inf)
  hit = (vr_scores[:, 0] > jnp.max(neg, axis=1, initial=-jnp.inf)).astype(jnp.float32)
  w = batch["example_mask"].astype(jnp.float32)
  return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


def vr_score_spread(vr_scores, batch):
  """Std of f(v, h) over each query's candidates (positive + real negatives), batch mean.

  The VR diagnostic to watch (docs/training_dynamics.md): when the video retrieval
  head ties every video this is ~0 while the VR loss sits at ln(1 + J).
  """
  keep = jnp.concatenate([jnp.ones_like(vr_scores[:, :1]), (batch["neg_mask"] > 0).astype(vr_scores.dtype)], 1)
  n = jnp.maximum(jnp.sum(keep, axis=1), 1.0)
  mean = jnp.sum(vr_scores * keep, axis=1) / n
  std = jnp.sqrt(jnp.sum(jnp.square(vr_scores - mean[:, None]) * keep, axis=1) / n)
  w = batch["example_mask"].astype(jnp.float32) * (n > 1)
  return jnp.sum(std * w) / jnp.maximum(jnp.sum(w), 1.0)


def make_loss_fn(model: hammer.Hammer, loss_config, *, train: bool) -> Callable:
  """(params, batch, rng) -> (total loss, dict of terms)."""

  def loss_fn(params, batch, rng):
    outputs = model.apply({"params": params}, batch, deterministic=not train, rngs={"dropout": rng})
    total, terms = losses.hammer_loss(outputs, batch, loss_config)
    return total, dict(terms, vr_accuracy=in_batch_retrieval_accuracy(outputs["vr_scores"], batch),
                       vr_spread=vr_score_spread(outputs["vr_scores"], batch))

  return loss_fn


OBJECTIVE_WEIGHTS = {"vr": "vr_weight", "tl": "tl_weight", "mlm": "mlm_weight", "dual_encoder": "dual_encoder_weight"}
SHARED_GROUPS = ("text", "video", "cross_modal")


def make_objective_grad_norms(model, config, state_shardings, mesh):
  """Jitted (params, batch, rng) -> {"grad/<objective>/<group>": norm}.

  The norm of the gradient that each weighted objective of Eq. 14 sends into each
  shared parameter group (`hammer.parameter_group`: text, video, cross_modal).
  One forward and one backward per objective, so training runs it on logged steps
  only. An objective whose gradient into the video and cross-modal groups is ~0
  is not shaping the representation it reads (docs/training_dynamics.md).
  """
  loss_config = config.loss

  def fn(params, batch, rng):
    def forward(p):
      out = model.apply({"params": p}, batch, deterministic=False, rngs={"dropout": rng})
      floats = {k: v for k, v in out.items() if jnp.issubdtype(v.dtype, jnp.floating)}
      return floats, {k: v for k, v in out.items() if k not in floats}

    outputs, pullback, rest = jax.vjp(forward, params, has_aux=True)
    _, terms = losses.hammer_loss(dict(outputs, **rest), batch, loss_config)
    groups = jax.tree_util.tree_map_with_path(
        lambda path, _: hammer.parameter_group([getattr(k, "key", str(k)) for k in path]), params)
    norms = {}
    for name, weight in OBJECTIVE_WEIGHTS.items():
      if name not in terms:
        continue
      term = lambda o, name=name: loss_config[weight] * losses.hammer_loss(dict(o, **rest), batch, loss_config)[1][name]
      (grads,) = pullback(jax.grad(term)(outputs))
      for group in SHARED_GROUPS:
        leaves = [g for g, lab in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(groups))
                  if lab == group]
        norms[f"grad/{name}/{group}"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves)) if leaves else 0.0
    return norms

  return jax.jit(fn, in_shardings=(state_shardings.params, ts.batch_sharding(mesh), ts.replicated(mesh)),
                 out_shardings=ts.replicated(mesh))


def make_train_step(model, config, tx: optax.GradientTransformation, schedule, state_shardings, mesh):
  """The jitted step: (state, batch, rng) -> (state, metrics); the state is donated."""
  loss_fn = make_loss_fn(model, config.loss, train=True)

  def step(state: ts.TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(terms, loss=total, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, in_shardings=(state_shardings, ts.batch_sharding(mesh), ts.replicated(mesh)),
                 out_shardings=(state_shardings, ts.replicated(mesh)), donate_argnums=(0,))


def make_eval_loss(model, config, state_shardings, mesh):
  loss_fn = make_loss_fn(model, config.loss, train=False)

  def step(params, batch):
    total, terms = loss_fn(params, batch, jax.random.key(0))
    return dict(terms, loss=total)

  return jax.jit(step, in_shardings=(state_shardings.params, ts.batch_sharding(mesh)),
                 out_shardings=ts.replicated(mesh))


def validation_loss(eval_loss, params, data, config, spec, mesh, num_batches: int) -> dict[str, float]:
  """Mean loss terms on the first `num_batches` batches of the eval split (fixed order)."""
  local = ts.check_batch_size(config.optim.batch_size, mesh)
  it = input_pipeline.TrainBatches(
      data, config.data.eval_split, spec, local_batch_size=local, seed=12345,
      global_offset=input_pipeline.local_batch_offset(mesh, config.optim.batch_size))
  sums: dict[str, float] = {}
  for _ in range(num_batches):
    m = jax.device_get(eval_loss(params, input_pipeline.make_global_batch(next(it), mesh)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v) / num_batches
  return sums


def _check_finite(step: int, metrics: dict[str, Any], ckpt: checkpointing.Checkpointer) -> dict[str, float]:
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not math.isfinite(values["loss"]):
    ckpt.wait()
    raise NonFiniteLossError(f"loss is {values['loss']} at step {step}; stopped. Last good checkpoint: "
                             f"step {ckpt.latest_step()} in {ckpt.directory}")
  return values


def _periodic_evaluator(model, config, data, workdir: str) -> Callable:
  """Corpus retrieval on the first `max_queries_during_training` queries of the eval split."""
  from hammer_jax import evaluation, evaluator
  ev = evaluator.Evaluator(model, config, data, config.data.eval_split, progress=False)

  def run(params, step, writer):
    results = evaluation.evaluate_split(
        ev, {"params": evaluator.local_params(params)}, top_k=config.eval.top_k_videos,
        max_queries=config.eval.max_queries_during_training,
        out_dir=os.path.join(workdir, "eval", f"periodic_step{step}"))
    scalars = evaluation.flat_scalars({k: v for k, v in results.items() if not k.endswith("_by_type")})
    writer.write_scalars(step, scalars)
    if "VR" in results:
      logging.info("step %d  eval (%d queries): VR r1 %.2f r10 %.2f median rank %.1f  VCMR 0.5-r10 %.2f  TL mIoU %.2f",
                   step, config.eval.max_queries_during_training, results["VR"]["r1"], results["VR"]["r10"],
                   results["VR"]["median_rank"], results["VCMR"]["0.5-r10"], results["TL"]["mIoU"])
    return scalars

  return run


def format_step_line(step: int, total: int, m: dict[str, float], config) -> str:
  """The console line of a logged step: losses, the VR diagnostics, per-objective gradients, speed."""
  j = config.data.num_negatives
  parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}"]
  terms = " ".join(f"{k} {m[k]:.4f}" for k in ("vr", "tl", "mlm", "dual_encoder") if k in m)
  parts.append(f"({terms})")
  if "vr" in m and j > 0:
    parts.append(f"vr/ln(1+J) {m['vr'] / math.log(1 + j):.3f}  vr spread {m['vr_spread']:.4f}  "
                 f"vr acc {m['vr_accuracy']:.3f}")
  grads = [k for k in m if k.startswith("grad/")]
  for name in dict.fromkeys(k.split("/")[1] for k in grads):
    parts.append(f"|g {name}| " + " ".join(f"{g[:5]} {m[f'grad/{name}/{g}']:.3g}" for g in SHARED_GROUPS
                                           if f"grad/{name}/{g}" in m))
  eta = (total - step) / max(m["steps_per_sec"], 1e-9)
  parts.append(f"lr {m['lr']:.2e}  {m['steps_per_sec']:.2f} steps/s  {m['examples_per_sec']:.1f} examples/s  "
               f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
  return "  ".join(parts)


def train_and_evaluate(config, workdir: str, *, evaluate_fn: Callable | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns last metrics.

  Args:
    evaluate_fn: optional `(params, step, writer) -> dict` run every
      `config.eval.every_steps` (the eval binary's evaluator on a slice).
  """
  from clu import metric_writers
  os.makedirs(workdir, exist_ok=True)
  ts.save_config(config, workdir)
  mesh = ts.create_mesh()
  local_batch = ts.check_batch_size(config.optim.batch_size, mesh)
  data = open_data(config, workdir)
  check_data_fits(data, config)
  spec = input_pipeline.PipelineSpec.from_config(config.data)

  model = hammer.create_model(config, data.video_dim, data.subtitle_dim)
  schedule = optimizer.learning_rate_schedule(config.optim)
  tx = optimizer.make_optimizer(config.optim)
  _, abstract, shardings = ts.abstract_train_state(model, config, tx, data.video_dim, data.subtitle_dim, mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.max_checkpoints_to_keep,
                                    save_every_steps=config.checkpoint_every_steps)
  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(abstract)
    logging.info("Resumed from step %d (%s)", int(state.step), ckpt.directory)
  else:
    state = ts.init_train_state(model, config, tx, data.video_dim, data.subtitle_dim, mesh, init_rng)
  start = int(state.step)
  total = int(config.optim.num_steps)

  writer = metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                                just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})
  train_step = make_train_step(model, config, tx, schedule, shardings, mesh)
  eval_loss = make_eval_loss(model, config, shardings, mesh)
  grad_norms = (make_objective_grad_norms(model, config, shardings, mesh)
                if config.get("log_objective_grad_norms", True) else None)
  batches = input_pipeline.TrainBatches(
      data, config.data.train_split, spec, local_batch_size=local_batch, seed=config.seed, start_step=start,
      global_offset=input_pipeline.local_batch_offset(mesh, config.optim.batch_size))
  preemption = checkpointing.PreemptionWatcher()
  logging.info("Training %d -> %d steps, global batch %d on %d devices (%d processes)",
               start, total, config.optim.batch_size, mesh.devices.size, jax.process_count())

  history: list[dict[str, Any]] = []
  last: dict[str, float] = {}
  t0, steps_in_window = time.time(), 0
  step = start
  try:
    while step < total:
      batch = input_pipeline.make_global_batch(next(batches), mesh)
      state, metrics = train_step(state, batch, dropout_rng)
      step += 1
      steps_in_window += 1
      history.append(metrics)
      save_due = step % config.checkpoint_every_steps == 0 or step == total
      stop = preemption.should_stop(step)
      if step % config.log_every_steps == 0 or save_due or stop or step == start + 1:
        # One host sync per log interval: every step's loss is checked for NaN/Inf.
        window = [_check_finite(step - len(history) + i + 1, m, ckpt) for i, m in enumerate(history)]
        history = []
        last = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        elapsed = time.time() - t0
        rate = steps_in_window / max(elapsed, 1e-9)
        last.update(steps_per_sec=rate, examples_per_sec=rate * config.optim.batch_size)
        if grad_norms is not None:
          last.update({k: float(v) for k, v in jax.device_get(grad_norms(state.params, batch, dropout_rng)).items()})
        writer.write_scalars(step, last)
        logging.info("%s", format_step_line(step, total, last, config))
        t0, steps_in_window = time.time(), 0
      if save_due or stop:
        ckpt.save(step, state, force=True)
      if config.eval.every_steps and (step % config.eval.every_steps == 0 or step == total):
        val = validation_loss(eval_loss, state.params, data, config, spec, mesh,
                              num_batches=max(1, config.eval.get("val_loss_batches", 4)))
        writer.write_scalars(step, {f"val_{k}": v for k, v in val.items()})
        logging.info("step %d  validation loss %.4f", step, val["loss"])
        last.update({f"val_{k}": v for k, v in val.items()})
        if evaluate_fn is None and config.eval.max_queries_during_training > 0:
          evaluate_fn = _periodic_evaluator(model, config, data, workdir)
        if evaluate_fn is not None:
          last.update(evaluate_fn(state.params, step, writer))
      if stop:
        logging.warning("Preempted: checkpoint saved at step %d; exiting", step)
        break
  finally:
    ckpt.close()
    preemption.close()
    writer.flush()
  last["step"] = step
  return last
