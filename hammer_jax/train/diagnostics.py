"""What training logs beyond the losses: the VR diagnostics and each objective's gradients.

  in_batch_retrieval_accuracy: the positive video beats all its negatives.
  vr_score_spread: std of f(v, h) over each query's candidates; ~0 means the VR
    head ties every video (its loss then sits at ln(1 + J)).
  objective gradient norms: how hard each weighted objective of Eq. 14 pulls on
    the parameters they share (text branches, video branches, cross-modal
    layers); an objective that sends ~0 into the video and cross-modal layers
    is not shaping the representation it reads.

docs/training_dynamics.md says what these showed and what to watch.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

from hammer_jax.model import build, losses
from hammer_jax.train import state as ts


def _negatives_scored(vr_scores, batch):
  """[B, J'] mask of the negatives the model scored: none when the VR objective is off (J' = 0)."""
  return batch["neg_mask"][:, :vr_scores.shape[1] - 1]


def in_batch_retrieval_accuracy(vr_scores, batch):
  """Fraction of queries whose positive video (column 0) outscores all its negatives.

  Chance is 1 / (1 + num_negatives) when every negative is valid.
  """
  neg = jnp.where(_negatives_scored(vr_scores, batch) > 0, vr_scores[:, 1:], -jnp.inf)
  hit = (vr_scores[:, 0] > jnp.max(neg, axis=1, initial=-jnp.inf)).astype(jnp.float32)
  w = batch["example_mask"].astype(jnp.float32)
  return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


def vr_score_spread(vr_scores, batch):
  """Std of f(v, h) over each query's candidates (positive + real negatives), batch mean.

  The VR diagnostic to watch (docs/training_dynamics.md): when the video retrieval
  head ties every video this is ~0 while the VR loss sits at ln(1 + J).
  """
  keep = jnp.concatenate([jnp.ones_like(vr_scores[:, :1]),
                          (_negatives_scored(vr_scores, batch) > 0).astype(vr_scores.dtype)], 1)
  n = jnp.maximum(jnp.sum(keep, axis=1), 1.0)
  mean = jnp.sum(vr_scores * keep, axis=1) / n
  std = jnp.sqrt(jnp.sum(jnp.square(vr_scores - mean[:, None]) * keep, axis=1) / n)
  w = batch["example_mask"].astype(jnp.float32) * (n > 1)
  return jnp.sum(std * w) / jnp.maximum(jnp.sum(w), 1.0)


OBJECTIVE_WEIGHTS = {"vr": "vr_weight", "tl": "tl_weight", "mlm": "mlm_weight", "dual_encoder": "dual_encoder_weight"}
SHARED_GROUPS = ("text", "video", "cross_modal")


def make_objective_grad_norms(model, config, state_shardings, mesh):
  """Jitted (params, batch, rng) -> {"grad/<objective>/<group>": norm}.

  The norm of the gradient that each weighted objective of Eq. 14 sends into each
  shared parameter group (`build.parameter_group`: text, video, cross_modal).
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
        lambda path, _: build.parameter_group([getattr(k, "key", str(k)) for k in path]), params)
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
