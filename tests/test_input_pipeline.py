"""The tf.data pipeline: labels, MLM masking, negatives, determinism, resume, eval coverage."""

import collections

import numpy as np
import pytest

from hammer_jax.data import input_pipeline as ip
from hammer_jax.data import sampling
from hammer_jax.data import prepared_data
from helpers import pipeline_spec

SPEC = pipeline_spec(max_frames=32, max_query_len=16, clip_len=4, num_negatives=3, shuffle_buffer=16)


def _train(data, **kw):
  args = dict(local_batch_size=8, seed=0, process_index=0, process_count=1)
  args.update(kw)
  spec = args.pop("spec", SPEC)
  return ip.TrainBatches(data, "train", spec, **args)


def test_seconds_to_frames_rule():
  # start = floor(st / d), end = ceil(ed / d) - 1, clamped, end >= start.
  cases = [((0.0, 3.0, 1.5, 10), (0, 1)), ((1.5, 1.6, 1.5, 10), (1, 1)), ((1.4, 1.5, 1.5, 10), (0, 0)),
           ((2.0, 100.0, 1.5, 10), (1, 9)), ((14.9, 15.0, 1.5, 10), (9, 9)), ((3.0, 3.0, 1.5, 10), (2, 2))]
  import tensorflow as tf
  import tensorflow.experimental.numpy as tnp
  from hammer_jax.data import alignment
  for (st, ed, d, n), want in cases:
    # The one rule, as numpy (preparation, host) and as TF (the input pipeline) evaluate it.
    s, e = alignment.seconds_to_frames(np.float32(st), np.float32(ed), np.float32(d), n)
    assert (int(s), int(e)) == want, (st, ed, d, n)
    s, e = alignment.seconds_to_frames(tf.constant(st), tf.constant(ed), tf.constant(d), tf.constant(float(n)), xp=tnp)
    assert (int(s), int(e)) == want, (st, ed, d, n)


def test_query_truncation_keeps_sep_in_numpy_and_tf():
  import tensorflow as tf
  import tensorflow.experimental.numpy as tnp
  from hammer_jax.data import alignment
  for ids, want in (([101, 5, 6, 7, 102], [101, 5, 6, 102]), ([101, 5, 102], [101, 5, 102]),
                    ([101, 5, 6, 102], [101, 5, 6, 102])):
    assert alignment.truncate_query(np.array(ids), 4).tolist() == want
    assert alignment.truncate_query(tf.constant(ids), 4, xp=tnp).numpy().tolist() == want


def test_labels_follow_timestamps(synthetic_prepared):
  data = synthetic_prepared
  table = prepared_data.read_queries(data, "train")
  by_id = {int(d): i for i, d in enumerate(table.desc_id)}
  it = _train(data)
  batch = next(it)
  for j, desc_id in enumerate(batch["desc_id"]):
    q = by_id[int(desc_id)]
    n = int(batch["frame_mask"][j].sum())
    start = min(max(int(np.floor(table.st[q] / 1.5)), 0), n - 1)
    end = max(min(max(int(np.ceil(table.ed[q] / 1.5)) - 1, 0), n - 1), start)
    assert (batch["start_frame"][j], batch["end_frame"][j]) == (start, end)
    assert (batch["start_clip"][j], batch["end_clip"][j]) == (start // SPEC.clip_len, end // SPEC.clip_len)
    lab = batch["frame_labels"][j]
    np.testing.assert_allclose(lab[:n].sum(-1), 1.0)
    assert np.all(lab[n:] == 0)
    if start == end:
      np.testing.assert_allclose(lab[start], [0.5, 0.5, 0.0])
    else:
      np.testing.assert_allclose(lab[start], [1, 0, 0])
      np.testing.assert_allclose(lab[end], [0, 1, 0])
    assert lab[:n, 2].sum() == n - len({start, end})


def test_mlm_masking_statistics():
  rng = np.random.default_rng(0)
  special = {"cls": 101, "sep": 102, "mask": 103, "pad": 0}
  b, length = 4000, 16
  ids = np.zeros((b, length), np.int32)
  lens = rng.integers(4, length + 1, size=b)
  for i, n in enumerate(lens):
    ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = 101, rng.integers(2000, 3000, size=n - 2), 102
  mask = (ids != 0).astype(np.int32)
  spec = pipeline_spec(max_frames=8, max_query_len=length, clip_len=4, max_mlm_predictions=3)
  out = sampling.mask_tokens(ids, mask, np.random.default_rng(1), spec, special, 30522)
  pos, tgt, w = out["mlm_positions"], out["mlm_targets"], out["mlm_weights"]
  counts = w.sum(1).astype(int)
  want = np.minimum(3, np.maximum(1, np.round((lens - 2) * 0.15).astype(int)))
  np.testing.assert_array_equal(counts, want)
  kinds = collections.Counter()
  for i in range(b):
    p = pos[i, :counts[i]]
    assert np.all((p > 0) & (p < lens[i] - 1)), "never [CLS], [SEP] or padding"
    np.testing.assert_array_equal(tgt[i, :counts[i]], ids[i, p])
    for orig, new in zip(ids[i, p], out["query_ids"][i, p]):
      kinds["mask" if new == 103 else "same" if new == orig else "random"] += 1
    unmasked = np.setdiff1d(np.arange(length), p)
    np.testing.assert_array_equal(out["query_ids"][i, unmasked], ids[i, unmasked])
  total = sum(kinds.values())
  assert abs(kinds["mask"] / total - 0.8) < 0.02
  assert abs(kinds["random"] / total - 0.1) < 0.02
  assert abs(kinds["same"] / total - 0.1) < 0.02


def test_negatives_are_other_videos():
  rng = np.random.default_rng(0)
  vids = np.array([0, 0, 1, 2, 2, 3, 4, 5])
  index, valid = sampling.sample_negatives(vids, 3, rng, offset=16)
  assert index.shape == (8, 3) and np.all(valid == 1)
  local = index - 16
  assert np.all((local >= 0) & (local < 8))
  assert np.all(vids[local] != vids[:, None])
  # A batch of one video has no negatives: all masked.
  index, valid = sampling.sample_negatives(np.zeros(4, int), 2, rng)
  assert np.all(valid == 0)


def test_batches_shapes_and_negatives(synthetic_prepared):
  batch = next(_train(synthetic_prepared))
  data = synthetic_prepared
  assert batch["video"].shape == (8, 32, data.video_dim)
  assert batch["subtitle"].shape == (8, 32, data.subtitle_dim)
  assert batch["query_ids"].shape == batch["query_mask"].shape == (8, 16)
  assert batch["mlm_positions"].shape == (8, SPEC.max_mlm_predictions)
  assert batch["neg_index"].shape == batch["neg_mask"].shape == (8, 3)
  vids = batch["video_index"]
  ok = batch["neg_mask"] > 0
  assert np.all(vids[batch["neg_index"]][ok] != np.repeat(vids[:, None], 3, 1)[ok])
  assert np.all(batch["query_ids"][:, 0] == data.manifest["special_token_ids"]["cls"])


def test_deterministic_and_seed_dependent(synthetic_prepared):
  a, b, c = _train(synthetic_prepared), _train(synthetic_prepared), _train(synthetic_prepared, seed=1)
  for _ in range(3):
    x, y, z = next(a), next(b), next(c)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(x["desc_id"], z["desc_id"])


def test_epoch_covers_every_query_once_and_resume_is_exact(synthetic_prepared):
  data = synthetic_prepared
  it = _train(data)
  n = it.num_examples
  assert n == data.split("train")["num_queries"]
  batches = [next(it) for _ in range(2 * n // 8 + 2)]
  ids = np.concatenate([b["desc_id"] for b in batches])
  first_epoch = ids[:n]
  assert len(set(first_epoch.tolist())) == n, "each query exactly once per epoch"
  assert sorted(first_epoch.tolist()) == sorted(ids[n:2 * n].tolist())
  assert not np.array_equal(first_epoch, ids[n:2 * n]), "each epoch is reshuffled"
  # Restart at steps inside the first epoch and across the epoch boundary.
  for step in (1, n // 8, n // 8 + 1):
    resumed = next(_train(data, start_step=step))
    for k in resumed:
      np.testing.assert_array_equal(resumed[k], batches[step][k], err_msg=f"{k} at step {step}")


def test_truncation_keeps_sep_and_clamps_labels(synthetic_prepared):
  spec = pipeline_spec(max_frames=6, max_query_len=5, clip_len=3, shuffle_buffer=4)
  batch = next(_train(synthetic_prepared, spec=spec))
  sep = synthetic_prepared.manifest["special_token_ids"]["sep"]
  lengths = batch["query_mask"].sum(1)
  assert np.all(lengths <= 5)
  assert np.all(batch["mlm_targets"][batch["mlm_weights"] > 0] != sep)
  assert np.all(batch["end_frame"] < 6) and np.all(batch["start_frame"] <= batch["end_frame"])
  assert batch["frame_mask"].shape == (8, 6)


def test_moments_beyond_the_frame_cut_are_left_out_of_training(synthetic_prepared):
  """Videos of 6-16 rows cut to 8: a query whose moment ends after row 8 is not a training example."""
  from hammer_jax.data import alignment
  data = synthetic_prepared
  spec = pipeline_spec(max_frames=8, max_query_len=16, clip_len=4, shuffle_buffer=16)
  table = prepared_data.read_queries(data, "train")
  info = data.split("train")
  rows = np.asarray(info["video_rows"])[table.video_index]
  _, last = alignment.seconds_to_frames(table.st, table.ed, np.float32(1.5), rows.astype(np.float32))
  fits = set(table.desc_id[last < 8].tolist())
  assert 0 < len(fits) < len(table)                                        # the corpus has both kinds
  it = _train(data, spec=spec)
  assert it.num_examples == len(fits)
  seen = np.concatenate([next(it)["desc_id"] for _ in range(it.num_examples // 8)])
  assert set(seen.tolist()) <= fits and len(set(seen.tolist())) == len(seen)
  by_id = {int(d): i for i, d in enumerate(table.desc_id)}
  for _ in range(3):
    b = next(it)
    for j, d in enumerate(b["desc_id"]):                                    # labels are the true moment's
      i = by_id[int(d)]
      s, e = alignment.seconds_to_frames(table.st[i], table.ed[i], np.float32(1.5), np.float32(rows[i]))
      assert (b["start_frame"][j], b["end_frame"][j]) == (int(s), int(e))
  # Resume lands on the same example after the filter.
  resumed = next(_train(data, spec=spec, start_step=3))
  reference = _train(data, spec=spec)
  for _ in range(3):
    next(reference)
  np.testing.assert_array_equal(resumed["desc_id"], next(reference)["desc_id"])


def test_eval_query_mask_counts_tokens_not_non_zero_ids():
  """The mask comes from each query's length: an id 0 inside a query is a token, padding is not."""
  batch = next(ip.eval_query_batches([np.array([101, 0, 7, 102]), np.array([101, 5, 102])], 6, 2))
  np.testing.assert_array_equal(batch["query_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])


def test_eval_batches_cover_everything_once(synthetic_prepared):
  data = synthetic_prepared
  table = prepared_data.read_queries(data, "val")
  assert len(table) == data.split("val")["num_queries"]
  seen = []
  for b in ip.eval_query_batches(table.token_ids, SPEC.max_query_len, 7, process_index=0, process_count=1):
    assert b["query_ids"].shape == (7, 16)
    seen += b["query_index"][b["example_mask"] > 0].tolist()
    assert np.all(b["query_mask"][b["example_mask"] == 0] == 0)
  assert sorted(seen) == list(range(len(table)))
  videos = list(ip.eval_video_batches(data, "val", SPEC, 5, process_index=0, process_count=1))
  got = np.concatenate([b["video_index"][b["example_mask"] > 0] for b in videos])
  assert sorted(got.tolist()) == list(range(data.split("val")["num_videos"]))
  assert all(b["video"].shape == (5, 32, data.video_dim) for b in videos)


def test_eval_batches_equal_count_across_processes(synthetic_prepared):
  data = synthetic_prepared
  table = prepared_data.read_queries(data, "val")
  counts, union = [], []
  for p in range(3):
    bs = list(ip.eval_query_batches(table.token_ids, SPEC.max_query_len, 4, process_index=p, process_count=3))
    counts.append(len(bs))
    union += [i for b in bs for i in b["query_index"][b["example_mask"] > 0].tolist()]
  assert len(set(counts)) == 1
  assert sorted(union) == list(range(len(table)))


def test_vocabulary_mismatch_is_refused(synthetic_prepared):
  from hammer_jax.model import pretrained
  synthetic_prepared.check_vocabulary(pretrained.vocab_fingerprint("minilm"))
  with pytest.raises(prepared_data.PreparedDataError, match="vocabulary"):
    synthetic_prepared.check_vocabulary("0" * 64, "other-bert")


def test_global_batch_on_eight_devices(synthetic_prepared):
  import jax
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()), ("data",))
  assert len(jax.devices()) == 8
  assert ip.local_batch_offset(mesh, 8) == 0
  batch = ip.make_global_batch(next(_train(synthetic_prepared)), mesh)
  assert "desc_id" not in batch
  assert batch["video"].shape[0] == 8
  assert len(batch["video"].sharding.device_set) == 8
  assert batch["video"].addressable_shards[3].data.shape[0] == 1


def test_same_readers_give_the_same_global_batches_on_any_number_of_processes(synthetic_prepared):
  """data.num_readers = 2: one process running both readers = two processes running one each (concatenated)."""
  spec = pipeline_spec(max_frames=32, max_query_len=16, clip_len=4, num_negatives=3, shuffle_buffer=16,
                       num_readers=2)
  one = ip.TrainBatches(synthetic_prepared, "train", spec, local_batch_size=8, seed=0, process_index=0,
                        process_count=1, start_step=2)
  two = [ip.TrainBatches(synthetic_prepared, "train", spec, local_batch_size=4, seed=0, process_index=p,
                         process_count=2, start_step=2, global_offset=4 * p) for p in range(2)]
  assert one.num_examples == sum(t.num_examples for t in two) == synthetic_prepared.split("train")["num_queries"]
  for _ in range(3):
    a, parts = next(one), [next(t) for t in two]
    for k in a:
      np.testing.assert_array_equal(a[k], np.concatenate([p[k] for p in parts]), err_msg=k)
  with pytest.raises(ValueError, match="does not divide over 2 processes"):
    ip.TrainBatches(synthetic_prepared, "train", pipeline_spec(max_frames=32, max_query_len=16, clip_len=4,
                                                               num_readers=3),
                    local_batch_size=4, seed=0, process_index=0, process_count=2)
