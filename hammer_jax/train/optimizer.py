"""Adam with the paper's learning-rate schedule (supplement 6.1.4), built from optax.

The rate rises linearly from 0 to `lr` over the first `warmup_fraction` of the
steps, stays there, then drops to `decay_factors[i] * lr` at
`decay_boundaries[i]` of training (paper: 0.1x at 50%, 0.01x at 75%).

`new_layer_lr_multiplier` (choice; 1.0, the paper's single rate, in every paper
config) scales the rate of the parameters trained from scratch: everything but
the word/position embeddings, the text branches and the MLM head, which start from
the pretrained BERT. `dual_encoder_lr_multiplier` scales the dual-encoder head's
rate further (not in the paper; the head is two projections, shallow enough for a
rate that would collapse the deep cross-modal stack): 1.0 in the paper configs, 10 in
`:recommended` (docs/training_dynamics.md measures both).
`word_embedding_lr_multiplier` scales the pretrained word-embedding table's rate
(not in the paper; an experiment of docs/training_dynamics.md: a word seen a few
times in training moves its row a few Adam steps, at the pretrained rate too
little to carry what the word means in the videos).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from hammer_jax.model.build import is_pretrained_path


def parameter_groups(params: Any) -> Any:
  """Tree like `params` of "word_embeddings" | "pretrained" | "dual_encoder" | "new" labels (module docstring)."""
  def label(path, _):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    if keys[:2] == ["embeddings", "word_embeddings"]:
      return "word_embeddings"
    if is_pretrained_path(keys):
      return "pretrained"
    return "dual_encoder" if "dual_encoder" in keys[:2] else "new"
  return jax.tree_util.tree_map_with_path(label, params)


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """step -> learning rate, from `config.optim`."""
  total = int(optim_config.num_steps)
  warmup = max(1, int(round(optim_config.warmup_fraction * total)))
  boundaries = [int(round(b * total)) for b in optim_config.decay_boundaries]
  if any(b <= warmup for b in boundaries) or boundaries != sorted(boundaries):
    raise ValueError(f"decay boundaries {boundaries} must be increasing and after the warm-up ({warmup} steps)")
  factors = list(optim_config.decay_factors)
  if len(factors) != len(boundaries):
    raise ValueError("config.optim.decay_factors and decay_boundaries differ in length")
  # piecewise_constant multiplies successive scales: convert absolute factors to ratios.
  ratios = [f / p for f, p in zip(factors, [1.0] + factors[:-1])]
  constant = optax.piecewise_constant_schedule(
      init_value=optim_config.lr, boundaries_and_scales={b - warmup: r for b, r in zip(boundaries, ratios)})
  ramp = optax.linear_schedule(0.0, optim_config.lr, warmup)
  return optax.join_schedules([ramp, constant], [warmup])


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Adam (or AdamW when weight_decay > 0; SGD with optimizer="sgd"), optional global-norm clipping."""
  schedule = learning_rate_schedule(optim_config)
  parts = []
  if optim_config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  kind = optim_config.get("optimizer", "adam")
  if kind == "sgd":
    parts.append(optax.sgd(schedule))
  elif kind != "adam":
    from configs.base import ConfigError
    raise ConfigError(f"optim.optimizer must be 'adam' or 'sgd', got {kind!r}")
  elif optim_config.weight_decay:
    parts.append(optax.adamw(schedule, weight_decay=optim_config.weight_decay))
  else:
    parts.append(optax.adam(schedule))
  new = float(optim_config.new_layer_lr_multiplier)
  head = new * float(optim_config.get("dual_encoder_lr_multiplier", 1.0))
  words = float(optim_config.get("word_embedding_lr_multiplier", 1.0))
  if new != 1.0 or head != 1.0 or words != 1.0:
    # Scaling Adam's update is scaling the rate (weight decay included) for that group.
    parts.append(optax.multi_transform({"pretrained": optax.identity(), "new": optax.scale(new),
                                        "dual_encoder": optax.scale(head), "word_embeddings": optax.scale(words)},
                                       parameter_groups))
  tx = optax.chain(*parts)
  if optim_config.get("train_only"):
    # Frozen parameters get a zero update (and no Adam state worth keeping).
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, optim_config.train_only))
  return tx


TRAINABLE_MODULES = {"dual_encoder": ("dual_encoder",)}


def trainable_labels(params: Any, train_only: str) -> Any:
  """Tree like `params` of "train" | "frozen": only the top-level modules `train_only` names train."""
  from configs.base import ConfigError
  if train_only not in TRAINABLE_MODULES:
    raise ConfigError(f"optim.train_only must be '' or one of {sorted(TRAINABLE_MODULES)}, got {train_only!r}")
  modules = TRAINABLE_MODULES[train_only]

  def label(path, _):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    return "train" if any(k in modules for k in keys[:2]) else "frozen"
  return jax.tree_util.tree_map_with_path(label, params)
