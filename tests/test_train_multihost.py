"""Two JAX processes (gloo on 127.0.0.1) train the same global batch to the same loss as one."""

import json

import jax
import numpy as np

from multihost import barrier, run_processes

STEPS = 3


def _train_on(batch_np, prepared_dir):
  """Runs STEPS train steps of the tiny config on `batch_np` (this process's rows)."""
  from configs import demo
  from hammer_jax.data import input_pipeline
  from hammer_jax.train import optimizer, loop as train
  from hammer_jax.train import state as ts
  from hammer_jax.model import build
  from hammer_jax.data import prepared_data
  config = demo.get_config("tiny")
  config.data.prepared_dir = prepared_dir
  data = prepared_data.open_prepared(prepared_dir)
  mesh = ts.create_mesh()
  model = build.create_model(config, data.video_dim, data.subtitle_dim)
  tx = optimizer.make_optimizer(config.optim)
  _, _, shardings = ts.abstract_train_state(model, config, tx, data.video_dim, data.subtitle_dim, mesh)
  state = ts.init_train_state(model, config, tx, data.video_dim, data.subtitle_dim, mesh, jax.random.key(0))
  step = train.make_train_step(model, config, tx, optimizer.learning_rate_schedule(config.optim), shardings, mesh)
  global_rows = batch_np["video"].shape[0]
  offset = input_pipeline.local_batch_offset(mesh, global_rows)
  local = {k: v[offset:offset + global_rows // jax.process_count()] for k, v in batch_np.items()}
  first = input_pipeline.make_global_batch(local, mesh)
  step.lower(state, first, jax.random.key(1)).compile()  # Warms the cache the call below hits.
  if jax.process_count() > 1:
    barrier("train_step_compiled")
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, input_pipeline.make_global_batch(local, mesh), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return losses


def worker(out_path, prepared_dir, batch_path):
  batch = dict(np.load(batch_path))
  losses = _train_on(batch, prepared_dir)
  with open(out_path, "w") as f:
    json.dump({"losses": losses, "devices": len(jax.devices()), "processes": jax.process_count()}, f)


def test_two_processes_match_one(synthetic_prepared, tmp_path):
  from configs import demo
  from hammer_jax.data import input_pipeline as ip
  config = demo.get_config("tiny")
  spec = ip.PipelineSpec.from_config(config.data)
  batch = next(ip.TrainBatches(synthetic_prepared, "train", spec, local_batch_size=config.optim.batch_size,
                               seed=0, process_index=0, process_count=1))
  batch = {k: v for k, v in batch.items() if k not in ip.HOST_ONLY_KEYS}
  np.savez(tmp_path / "batch.npz", **batch)
  single = _train_on(batch, synthetic_prepared.path)
  assert len(jax.devices()) == 8
  outs = run_processes("test_train_multihost:worker", tmp_path, devices_per_process=4,
                       prepared_dir=synthetic_prepared.path, batch_path=str(tmp_path / "batch.npz"))
  results = [json.load(open(o)) for o in outs]
  for r in results:
    assert r["devices"] == 8 and r["processes"] == 2
    np.testing.assert_allclose(r["losses"], single, atol=1e-5, rtol=0)
  assert single[-1] != single[0]  # the steps really updated the parameters
