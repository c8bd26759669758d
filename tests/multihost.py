"""Runs a function in two JAX processes that form one multi-host job on 127.0.0.1.

Each worker sets 2 fake CPU devices, gloo collectives and `jax.distributed`,
then calls `module:function(out_path, **kwargs)`; the test reads the outputs.
"""

import json
import os
import socket
import subprocess
import sys

from helpers import REPO_ROOT

_WORKER = r"""
import importlib, json, os, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, os.path.join({repo!r}, "tests"))
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes={n}, process_id={pid})
mod, fn = {target!r}.split(":")
getattr(importlib.import_module(mod), fn)({out!r}, **json.loads({kwargs!r}))
jax.distributed.shutdown()
"""


def barrier(name: str, timeout_s: int = 600) -> None:
  """Waits (coordination service, not gloo) until every process reaches `name`.

  Gloo gives up on a collective whose peers arrive more than 30 s apart. Under a
  loaded test machine one process can finish compiling that much later than the
  other, so workers compile first and meet here before their first collective.
  """
  from jax._src import distributed
  distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(target: str, tmp_path, num_processes: int = 2, devices_per_process: int = 2,
                  timeout: int = 300, **kwargs) -> list[str]:
  """Starts the workers, waits, and returns each one's output path."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT)
  procs, outs = [], []
  for pid in range(num_processes):
    out = str(tmp_path / f"process_{pid}.json")
    code = _WORKER.format(repo=REPO_ROOT, port=port, n=num_processes, pid=pid, target=target, out=out,
                          kwargs=json.dumps(kwargs))
    procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
    outs.append(out)
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return outs
