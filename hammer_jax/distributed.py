"""The multi-process job: joining it (`initialize_distributed`, from `startup.start`) and meeting in it (`barrier`).

Below the binaries' start-up, so that the library (training, retrieval, index
builds) can meet the other processes without importing the binaries' flags.
"""

from __future__ import annotations

import itertools
import os

from absl import logging

_BARRIERS = itertools.count()


def detected_cluster() -> str | None:
  """The cluster environment `jax.distributed.initialize()` would auto-detect here, or None.

  The same test JAX applies (each ClusterEnv's `is_env_present`, opt-in methods
  such as mpi4py excluded), asked without starting anything.
  """
  from jax._src import clusters
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if not env.opt_in_only_method and env.is_env_present():
      return env.__name__
  return None


def initialize_distributed(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0) -> str:
  """Starts the runtime as `startup`'s docstring says (flags, else a detected cluster, else one process);
  returns how ("flags", a cluster's name, "single")."""
  import jax
  if coordinator_address:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or coordinator_address.startswith(("127.", "localhost")):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    how = "flags"
  else:
    cluster = detected_cluster()
    if cluster is None:
      how = "single"
    else:
      jax.distributed.initialize()
      how = cluster
  # One line per process says what each host sees; a one-process job says it
  # in the training log instead (its errors stay one line on stderr).
  log = logging.info if jax.process_count() > 1 else logging.debug
  log("JAX process %d of %d (%s): %d local devices, %d global devices (%s)", jax.process_index(),
               jax.process_count(), how, jax.local_device_count(), jax.device_count(), jax.default_backend())
  return how


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (no-op in a one-process job).

  Through the coordination service, not a device collective: on CPU jobs gloo
  gives up on a collective whose processes arrive more than 30 s apart, which a
  compile or a share of an evaluation that takes longer on one host easily
  causes; processes meet here first. Orbax waits the same way.
  """
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=protected-access
  # A barrier id serves once: number them (every process passes its barriers in the same order).
  distributed.global_state.client.wait_at_barrier(f"{name}#{next(_BARRIERS)}", timeout_in_ms=timeout_s * 1000)
