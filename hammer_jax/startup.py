"""Starting a binary: quieter library logs, then the JAX distributed runtime when the job spans processes.

Every binary (train, eval, search, index, app) calls `start()` first, before
anything touches a JAX device. Which job it is part of is decided, in order:

  1. `--coordinator_address=host:port --num_processes=N --process_id=I` given:
     those (a cluster JAX cannot detect; on CPU-only machines the collectives
     go through gloo);
  2. a cluster JAX's own auto-detection recognises (`jax.distributed.initialize()`
     without arguments: a Cloud TPU VM slice from its metadata server, GKE,
     SLURM, Open MPI; jax._src.clusters): the runtime starts with what it found;
  3. neither: one process, no runtime.

Each process then logs one line: which of these it is, its index, the process
count and its local and global devices. Without the runtime JAX's preemption
notice (`multihost_utils.reached_preemption_sync_point`) never fires, which is
why every binary starts here.
"""

from __future__ import annotations

import itertools
import os

from absl import flags, logging

_BARRIERS = itertools.count()

flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-process job outside the "
                    "clusters JAX detects itself (Cloud TPU, GKE, SLURM, Open MPI).")
flags.DEFINE_integer("num_processes", 1, "Processes in the job (with --coordinator_address).")
flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")


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
  """Starts the runtime as the module docstring says; returns how ("flags", a cluster's name, "single")."""
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
  logging.info("JAX process %d of %d (%s): %d local devices, %d global devices (%s)", jax.process_index(),
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


def start() -> str:
  """Quiet library logs, then `initialize_distributed` from the flags; returns how it started."""
  from hammer_jax import logs
  logs.quiet_library_logs()
  f = flags.FLAGS
  return initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
