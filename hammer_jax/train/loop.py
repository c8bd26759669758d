"""The multi-task training loop: `state = train_and_evaluate(config, workdir)`.

One linear function, big_vision style: data -> model -> sharded state (fresh or
restored) -> jitted train step with donated state -> loop with logging,
validation loss, periodic evaluation, checkpoints, preemption and a NaN guard ->
the final evaluation, in process, on the state it just trained. The loss is
Eq. 14: `vr_weight * l_VR + tl_weight * l_TL + mlm_weight * l_MLM` (losses.py).

Reproducibility: the data order, MLM masks and negatives are functions of
(seed, step) (input_pipeline.py) and dropout uses `fold_in(rng, step)`, so a run
restored from step k continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from absl import logging

from hammer_jax import distributed, files, restore, run_config, run_text_model
from hammer_jax import workdir as workdirs
from hammer_jax.data import input_pipeline, prepared_data
from hammer_jax.errors import HammerError
from hammer_jax.model import hammer, losses, pretrained
from hammer_jax.train import checkpointing, diagnostics, optimizer, resume
from hammer_jax.train import state as ts


class NonFiniteLossError(HammerError, FloatingPointError):
  """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


def check_data_fits(data: prepared_data.PreparedData, config) -> None:
  """Refuses data tokenised with another vocabulary than the model's text checkpoint, or without queries."""
  if not data.has_queries:
    raise prepared_data.PreparedDataError(
        f"{data.path}: a corpus without queries (data_prep.corpus) cannot be trained on; search it with a trained "
        "model (docs/own_videos.md)")
  checkpoint = config.model.text_checkpoint
  if checkpoint:
    data.check_vocabulary(pretrained.vocab_fingerprint(checkpoint), checkpoint)
  elif int(data.manifest["vocab_size"]) > config.model.bert.vocab_size:
    raise prepared_data.PreparedDataError(
        f"{data.path}: vocabulary of {data.manifest['vocab_size']} tokens exceeds the model's "
        f"{config.model.bert.vocab_size}")


def make_loss_fn(model: hammer.Hammer, loss_config, *, train: bool) -> Callable:
  """(params, batch, rng) -> (total loss, dict of terms and the VR diagnostics)."""

  def loss_fn(params, batch, rng):
    outputs = model.apply({"params": params}, batch, deterministic=not train, rngs={"dropout": rng})
    total, terms = losses.hammer_loss(outputs, batch, loss_config)
    if "neg_mask" in outputs:  # hard negatives: the diagnostics read the negatives the model mined
      batch = dict(batch, neg_mask=outputs["neg_mask"])
    return total, dict(terms, vr_accuracy=diagnostics.in_batch_retrieval_accuracy(outputs["vr_scores"], batch),
                       vr_spread=diagnostics.vr_score_spread(outputs["vr_scores"], batch))

  return loss_fn


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


def hparams(config) -> dict[str, Any]:
  """The whole resolved config as flat TensorBoard hparams ("optim.lr": 2e-4, ...)."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        walk(name + ".", value)
      else:
        out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

  walk("", config.copy_and_resolve_references())
  return out


def summary_writer(workdir: str):
  """TensorBoard on process 0, nothing elsewhere; the console lines are the loop's own."""
  from clu import metric_writers
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.SummaryWriter(files.native(workdirs.tensorboard_dir(workdir)))


def make_evaluator(model, config, data, *, max_queries: int | None, analyses: bool):
  from hammer_jax.retrieval.evaluator import Evaluator
  from hammer_jax.retrieval.scorer import PairScorer
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding,
                      progress=max_queries is None)
  return Evaluator(scorer, config, data, config.data.eval_split, top_k=config.eval.top_k_videos,
                   max_queries=max_queries, analyses=analyses)


def evaluate(evaluator, params, writer, step: int, out_dir: str, prefix: str) -> dict[str, float]:
  """Runs `evaluator` on `params`, writes its scalars under `prefix/` and logs the headline numbers."""
  values = dict(evaluator.run({"params": params}, out_dir=out_dir))
  writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in values.items() if "_by_type/" not in k})
  if "VR/r1" in values:
    logging.info("step %d  %s (%d queries): VR r1 %.2f r10 %.2f median rank %.1f  VCMR 0.5-r10 %.2f  TL mIoU %.2f",
                 step, prefix, len(evaluator.rows), values["VR/r1"], values["VR/r10"], values["VR/median_rank"],
                 values["VCMR/0.5-r10"], values["TL/mIoU"])
  return values


def train_and_evaluate(config, workdir: str) -> ts.TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final state.

  Every `config.eval.every_steps`: a validation loss and (with
  `eval.max_queries_during_training` > 0) corpus retrieval on that many eval
  queries. After the last step, with `config.eval.final_eval`: the whole eval split
  (`W/eval/<split>_step<N>/`, the demo's summary printed). A preempted run saves,
  stops and returns its state without the final evaluation.
  """
  data = run_config.open_data(config, workdir)
  check_data_fits(data, config)
  spec = input_pipeline.PipelineSpec.from_config(config.data)
  training = ts.setup_training(config, data.video_dim, data.subtitle_dim)
  mesh, model, tx, shardings = training.mesh, training.model, training.tx, training.shardings
  local_batch = ts.check_batch_size(config.optim.batch_size, mesh)
  schedule = optimizer.learning_rate_schedule(config.optim)
  ckpt = checkpointing.Checkpointer(workdirs.checkpoint_dir(workdir), max_to_keep=config.max_checkpoints_to_keep,
                                    save_every_steps=config.checkpoint_every_steps)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  if ckpt.latest_step() is not None:
    try:
      state = ckpt.restore(training.abstract)
    except checkpointing.CheckpointMismatchError as e:
      raise resume.not_resumable(config, workdir, e) from None
    logging.info("Resumed from step %d (%s)", int(state.step), ckpt.directory)
  else:
    state = training.fresh_state(config, init_rng)
    if config.get("init_from"):
      state, fresh = ts.with_params_from(state, restore.restore(config.init_from).params["params"])
      logging.info("Parameters from %s, except %d fresh: %s", config.init_from, len(fresh),
                   ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""))
  # Only now: config.json describes W's checkpoints, so it changes only once this run can continue them.
  run_config.save_config(config, workdir)
  run_text_model.save(config, workdir)  # What inference needs of the BERT folder, so W travels without it.
  start, total = int(state.step), int(config.optim.num_steps)

  writer = summary_writer(workdir)
  if start == 0:
    writer.write_hparams(hparams(config))
  train_step = make_train_step(model, config, tx, schedule, shardings, mesh)
  eval_loss = make_eval_loss(model, config, shardings, mesh)
  grad_norms = (diagnostics.make_objective_grad_norms(model, config, shardings, mesh)
                if config.log_objective_grad_norms else None)
  periodic = None
  batches = input_pipeline.TrainBatches(
      data, config.data.train_split, spec, local_batch_size=local_batch, seed=config.seed, start_step=start,
      global_offset=input_pipeline.local_batch_offset(mesh, config.optim.batch_size))
  preemption = checkpointing.PreemptionWatcher()
  logging.info("Training %d -> %d steps, global batch %d on %d devices (%d processes)",
               start, total, config.optim.batch_size, mesh.devices.size, jax.process_count())
  pending = [input_pipeline.make_global_batch(next(batches), mesh)] if start < total else []
  if jax.process_count() > 1 and pending:
    # Compile every program with a cross-process collective first, then meet: on CPU jobs gloo gives up on a
    # collective whose processes arrive more than 30 s apart, and compile times differ that much.
    train_step = train_step.lower(state, pending[0], dropout_rng).compile()
    if grad_norms is not None:
      grad_norms = grad_norms.lower(state.params, pending[0], dropout_rng).compile()
    if config.eval.every_steps:
      eval_loss = eval_loss.lower(state.params, pending[0]).compile()
    distributed.barrier("training_programs_compiled")

  history: list[dict[str, Any]] = []
  t0, steps_in_window = time.time(), 0
  step, stopped = start, False
  try:
    while step < total:
      batch = pending.pop() if pending else input_pipeline.make_global_batch(next(batches), mesh)
      state, metrics = train_step(state, batch, dropout_rng)
      step += 1
      steps_in_window += 1
      history.append(metrics)
      save_due = step % config.checkpoint_every_steps == 0 or step == total
      stopped = preemption.should_stop(step)
      if step % config.log_every_steps == 0 or save_due or stopped or step == start + 1:
        # One host sync per log interval: every step's loss is checked for NaN/Inf.
        window = [_check_finite(step - len(history) + i + 1, m, ckpt) for i, m in enumerate(history)]
        history = []
        last = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        rate = steps_in_window / max(time.time() - t0, 1e-9)
        last.update(steps_per_sec=rate, examples_per_sec=rate * config.optim.batch_size)
        if grad_norms is not None:
          last.update({k: float(v) for k, v in jax.device_get(grad_norms(state.params, batch, dropout_rng)).items()})
        writer.write_scalars(step, last)
        logging.info("%s", diagnostics.format_step_line(step, total, last, config))
        t0, steps_in_window = time.time(), 0
      if stopped:
        # Committed before the line says so: a preempted VM is killed about 30 s after SIGTERM, so the
        # save waits here rather than in the teardown, and no evaluation runs first.
        saving = time.time()
        ckpt.save(step, state, force=True)
        ckpt.wait()
        logging.warning("Preempted: checkpoint saved at step %d (committed in %.1f s); exiting",
                        step, time.time() - saving)
        break
      if save_due:
        ckpt.save(step, state, force=True)
      if config.eval.every_steps and (step % config.eval.every_steps == 0 or step == total):
        val = validation_loss(eval_loss, state.params, data, config, spec, mesh,
                              num_batches=max(1, config.eval.val_loss_batches))
        writer.write_scalars(step, {f"val_{k}": v for k, v in val.items()})
        logging.info("step %d  validation loss %.4f", step, val["loss"])
        if config.eval.max_queries_during_training > 0:
          periodic = periodic or make_evaluator(model, config, data,
                                                max_queries=config.eval.max_queries_during_training,
                                                analyses=False)
          evaluate(periodic, state.params, writer, step, workdirs.eval_dir(workdir, "periodic", step), "eval")
    if config.eval.final_eval and step == total and not stopped:
      final = make_evaluator(model, config, data, max_queries=None, analyses=True)
      out_dir = workdirs.eval_dir(workdir, config.data.eval_split, step)
      values = evaluate(final, state.params, writer, step, out_dir, f"eval_{config.data.eval_split}")
      if jax.process_index() == 0 and values:
        from hammer_jax.retrieval import evaluator, report
        print(report.final_summary(workdir, data, config.data.eval_split, step, evaluator.nested(values.items()),
                                   out_dir, config.eval.top_k_videos))
  finally:
    # The exit path (main.exit_without_teardown) relies on this: when it returns
    # or raises, the last checkpoint is committed and the TensorBoard events are
    # on disk, so nothing is lost if the process ends without its teardown.
    try:
      ckpt.close()  # Waits for the in-flight async save; Orbax commits a checkpoint by renaming it.
    finally:
      writer.close()
      preemption.close()
  return state
