"""The train state, the device mesh, and creating or restoring the state already sharded.

Data parallelism over a 1-D mesh whose `data` axis spans every device of every
host: batches are sharded along `data`, parameters and optimizer state are
replicated. The state is never materialised unsharded: `jax.eval_shape` gives its
structure, a jitted init with `out_shardings` creates it in place, and restores
go onto the same abstract, sharded target (so a checkpoint also restores onto
another topology). `setup_training` is the one setup of training and its
benchmarks; `abstract_params` the target of inference's params-only restore
(`hammer_jax/restore.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hammer_jax.model import build, hammer
from hammer_jax.train import optimizer

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: the model's params; opt_state: the optax state."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_mesh() -> Mesh:
  """1-D mesh over all devices of all processes (process-major device order)."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), (DATA_AXIS,))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Returns the per-process batch; the global batch must divide over devices and hosts."""
  n = mesh.devices.size
  if global_batch % n:
    from configs.base import ConfigError
    raise ConfigError(f"global batch size {global_batch} does not divide over {n} devices "
                     f"(config.optim.batch_size must be a multiple of {n}; evaluation rounds "
                     f"config.eval.batch_size to a multiple itself)")
  return global_batch // jax.process_count()


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Replicates every leaf (data parallelism)."""
  return jax.tree_util.tree_map(lambda _: replicated(mesh), abstract_state)


def _with_shardings(shapes: Any, mesh: Mesh) -> tuple[Any, Any]:
  """(the abstract tree with a replicated sharding on each leaf, the shardings)."""
  shardings = state_shardings(shapes, mesh)
  abstract = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return abstract, shardings


def abstract_params(model: hammer.Hammer, config, video_dim: int, subtitle_dim: int, mesh: Mesh) -> Any:
  """The model's params as ShapeDtypeStructs with shardings, without allocating them (a params-only restore)."""
  example = build.dummy_batch(config, video_dim, subtitle_dim, batch_size=1)
  shapes = jax.eval_shape(lambda rng: build.init_random_params(model, rng, example)["params"], jax.random.key(0))
  return _with_shardings(shapes, mesh)[0]


@dataclasses.dataclass(frozen=True)
class Training:
  """What training (and a benchmark of it) builds once: mesh, model, optimizer, the state's abstract form.

  abstract / shardings: TrainStates of ShapeDtypeStructs (with shardings) and of
  NamedShardings; `fresh_state` creates the state in place, already sharded.
  """
  mesh: Mesh
  model: hammer.Hammer
  tx: optax.GradientTransformation
  abstract: TrainState
  shardings: TrainState
  init: Callable[[jax.Array], TrainState]

  def fresh_state(self, config, rng) -> TrainState:
    """A fresh, sharded state; text branches from the configured BERT checkpoint."""
    state = jax.jit(self.init, out_shardings=self.shardings)(rng)
    # Adam's moments start at zero whatever the params are, so they need no reload.
    return state.replace(params=build.load_pretrained_text(state.params, config))


def setup_training(config, video_dim: int, subtitle_dim: int, tx: optax.GradientTransformation | None = None,
                   mesh: Mesh | None = None) -> Training:
  """The model of `config` for data of these feature widths, on `mesh` (default: every device), with `tx`
  (default: `optimizer.make_optimizer(config.optim)`)."""
  mesh = mesh or create_mesh()
  model = build.create_model(config, video_dim, subtitle_dim)
  tx = tx or optimizer.make_optimizer(config.optim)
  example = build.dummy_batch(config, video_dim, subtitle_dim, batch_size=1)

  def init(rng):
    params = build.init_random_params(model, rng, example)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract, shardings = _with_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
  return Training(mesh=mesh, model=model, tx=tx, abstract=abstract, shardings=shardings, init=init)


def with_params_from(state: TrainState, source: Any) -> tuple[TrainState, list[str]]:
  """`state` with every parameter that `source` (params of another run) has under the same name and shape.

  Returns the new state and the names of the parameters that kept their fresh
  values (e.g. a head the old model did not have), for the log.
  """
  flat_source = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(source)}
  fresh = []

  def take(path, leaf):
    name = jax.tree_util.keystr(path)
    value = flat_source.get(name)
    if value is None or tuple(value.shape) != tuple(leaf.shape):
      fresh.append(name)
      return leaf
    return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda idx, v=value: np.asarray(v)[idx])

  params = jax.tree_util.tree_map_with_path(take, state.params)
  return state.replace(params=params), fresh
