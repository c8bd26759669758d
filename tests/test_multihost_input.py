"""Two JAX processes reading the same split see disjoint parts whose union is the whole."""

import json

import numpy as np

from multihost import run_processes
from helpers import pipeline_spec


def read_parts(out_path, prepared_dir):
  """Worker: one epoch of training examples, all eval queries and videos of this process."""
  import jax
  from jax.sharding import Mesh
  from hammer_jax.data import input_pipeline as ip
  from hammer_jax.data import prepared_data
  data = prepared_data.open_prepared(prepared_dir)
  spec = pipeline_spec(max_frames=32, max_query_len=16, clip_len=4, shuffle_buffer=8)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  local = 4
  offset = ip.local_batch_offset(mesh, local * jax.process_count())
  it = ip.TrainBatches(data, "train", spec, local_batch_size=local, seed=0, global_offset=offset)
  train_ids = []
  for _ in range(it.num_examples // local):
    b = next(it)
    train_ids += b["desc_id"].tolist()
  glob = ip.make_global_batch(b, mesh)
  table = prepared_data.read_queries(data, "val")
  queries = [i for q in ip.eval_query_batches(table.token_ids, spec.max_query_len, 3)
             for i in q["query_index"][q["example_mask"] > 0].tolist()]
  n_query_batches = len(list(ip.eval_query_batches(table.token_ids, spec.max_query_len, 3)))
  videos = [i for v in ip.eval_video_batches(data, "val", spec, 3)
            for i in v["video_index"][v["example_mask"] > 0].tolist()]
  with open(out_path, "w") as f:
    json.dump({"process": jax.process_index(), "train": train_ids, "num_examples": it.num_examples,
               "offset": offset, "neg_index": b["neg_index"].tolist(), "global_rows": glob["video"].shape[0],
               "devices": len(jax.devices()), "queries": queries, "query_batches": n_query_batches,
               "videos": videos}, f)


def test_two_processes_read_disjoint_parts(synthetic_prepared, tmp_path):
  outs = run_processes("test_multihost_input:read_parts", tmp_path, prepared_dir=synthetic_prepared.path)
  a, b = (json.load(open(o)) for o in outs)
  assert a["devices"] == b["devices"] == 4
  assert (a["offset"], b["offset"]) == (0, 4)
  assert a["global_rows"] == b["global_rows"] == 8
  # Negatives index rows of the process's own part of the global batch.
  assert all(0 <= i < 4 for row in a["neg_index"] for i in row)
  assert all(4 <= i < 8 for row in b["neg_index"] for i in row)
  info = synthetic_prepared.split("train")
  assert a["num_examples"] + b["num_examples"] == info["num_queries"]
  for key in ("train", "queries", "videos"):
    assert not set(a[key]) & set(b[key]), key
  assert len(set(a["train"])) == len(a["train"]) and len(set(b["train"])) == len(b["train"])
  from hammer_jax.data import prepared_data
  all_train = set(prepared_data.read_queries(synthetic_prepared, "train").desc_id.tolist())
  assert set(a["train"]) | set(b["train"]) <= all_train
  # Epoch-sized reads miss at most the remainder of the last partial batch.
  assert len(all_train) - len(set(a["train"]) | set(b["train"])) < 2 * 4
  assert sorted(a["queries"] + b["queries"]) == list(range(synthetic_prepared.split("val")["num_queries"]))
  assert a["query_batches"] == b["query_batches"]
  assert sorted(a["videos"] + b["videos"]) == list(range(synthetic_prepared.split("val")["num_videos"]))
