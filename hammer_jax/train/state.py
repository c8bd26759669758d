"""The train state, the device mesh, and creating or restoring the state already sharded.

Data parallelism over a 1-D mesh whose `data` axis spans every device of every
host: batches are sharded along `data`, parameters and optimizer state are
replicated. The state is never materialised unsharded: `jax.eval_shape` gives its
structure, a jitted init with `out_shardings` creates it in place, and restores
go onto the same abstract, sharded target (so a checkpoint also restores onto
another topology). Shared by training and `workdir.restore`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hammer_jax.model import build, hammer

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


def abstract_train_state(model: hammer.Hammer, config, tx: optax.GradientTransformation,
                         video_dim: int, subtitle_dim: int, mesh: Mesh):
  """(init function, abstract state with shardings, shardings) without allocating anything."""
  example = build.dummy_batch(config, video_dim, subtitle_dim, batch_size=1)

  def init(rng):
    params = build.init_random_params(model, rng, example)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = state_shardings(shapes, mesh)
  abstract = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return init, abstract, shardings


def init_train_state(model, config, tx, video_dim: int, subtitle_dim: int, mesh: Mesh, rng) -> TrainState:
  """A fresh, sharded state; text branches from the configured BERT checkpoint."""
  init, _, shardings = abstract_train_state(model, config, tx, video_dim, subtitle_dim, mesh)
  state = jax.jit(init, out_shardings=shardings)(rng)
  params = build.load_pretrained_text(state.params, config)
  # Adam's moments start at zero whatever the params are, so they need no reload.
  return state.replace(params=params)


def params_from_workdir(state: TrainState, init_from: str) -> tuple[TrainState, list[str]]:
  """`state` with every parameter that `init_from`'s latest checkpoint has (same name and shape).

  Returns the new state and the names of the parameters that kept their fresh
  values (e.g. a head the old model did not have), for the log.
  """
  from hammer_jax import workdir as workdirs
  source = workdirs.restore(init_from)[3]["params"]
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
