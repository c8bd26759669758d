"""Seconds per checkpoint save: the train state as jax.Arrays vs its host copy.

`checkpointing.Checkpointer.save` hands Orbax a host copy of the state when one
process holds every leaf whole (data-parallel training replicates parameters).
This measures why, side by side in one process: each variant saves the same
state `--saves` times into its own folder, every save timed to its commit
(`wait_until_finished`), with the model of `configs/demo.py:<--variant>` on `--devices` devices
(fake CPU devices on a CPU host, as the tests use).

  python benchmarks/checkpoint_save_benchmark.py --variant=tiny --devices=8 --saves=3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="tiny", help="configs/demo.py variant ('tiny', or '' for the demo model)")
  p.add_argument("--devices", type=int, default=8, help="CPU devices to replicate the state over")
  p.add_argument("--saves", type=int, default=3, help="timed saves per variant")
  p.add_argument("--video_dim", type=int, default=16)
  p.add_argument("--subtitle_dim", type=int, default=8)
  p.add_argument("--out", default="", help="also write the results as JSON here")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  import jax
  import orbax.checkpoint as ocp
  from configs import demo
  from hammer_jax.train import checkpointing
  from hammer_jax.train import state as ts

  config = demo.get_config(args.variant)
  training = ts.setup_training(config, args.video_dim, args.subtitle_dim)
  state = jax.jit(training.init, out_shardings=training.shardings)(jax.random.key(0))
  leaves = jax.tree_util.tree_leaves(state)
  result = {"devices": jax.device_count(), "leaves": len(leaves),
            "megabytes": round(sum(x.nbytes for x in leaves) / 2**20, 1), "seconds_per_save": {}}
  variants = {"jax.Array (Orbax writes each shard)": lambda s: s,
              "host copy (Checkpointer.save)": checkpointing._savable}  # pylint: disable=protected-access
  root = tempfile.mkdtemp(prefix="ckpt_bench_")
  try:
    for i, (name, prepare) in enumerate(variants.items()):
      manager = ocp.CheckpointManager(os.path.join(root, str(i)), item_names=("state",),
                                      options=ocp.CheckpointManagerOptions(create=True))
      times = []
      for step in range(args.saves + 1):  # Save 0 also creates the folders: not timed.
        t0 = time.perf_counter()
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(prepare(state))), force=True)
        manager.wait_until_finished()
        if step:
          times.append(time.perf_counter() - t0)
      manager.close()
      result["seconds_per_save"][name] = round(sorted(times)[len(times) // 2], 2)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"{result['leaves']} leaves, {result['megabytes']} MiB, {result['devices']} devices; median of "
        f"{args.saves} saves, each to its commit:")
  for name, seconds in result["seconds_per_save"].items():
    print(f"  {name:40s} {seconds:6.2f} s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
