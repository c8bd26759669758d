"""Two-stage retrieval: the first-stage loss, the FAISS index, retrieve's two-stage mode, the index binary."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO_ROOT
from multihost import run_processes

from hammer_jax.model import losses
from hammer_jax.retrieval import first_stage, index_files, parts_store


def _hand_case():
  """3 rows, 2 clips of 2-d unit vectors; row 1's second clip is padding."""
  q = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
  clips = np.array([[[1, 0], [0, 1]], [[0.6, 0.8], [-1, 0]], [[0, -1], [0.8, 0.6]]], np.float32)
  mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
  return q, clips, mask


def _nll(logits, own):
  return -(logits[own] - math.log(sum(math.exp(x) for x in logits)))


def test_first_stage_loss_on_a_hand_computed_case():
  q, clips, mask = _hand_case()
  # s(q, v) = max over real clips: q0 -> (1, 0.6, 0.8), q1 -> (1, 0.8, 0.6), q2 -> (0.8, 1.0, 0.96); scale 2.
  expected = np.mean([_nll([2.0, 1.2, 1.6], 0), _nll([2.0, 1.6, 1.2], 1), _nll([1.6, 2.0, 1.92], 2)])
  got = losses.dual_encoder_loss(q, clips, mask, np.array([0, 1, 2]), np.ones(3, np.float32), 2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # Rows 0 and 1 show the same video: neither is the other's negative. Row 2 weighs 0: no query, no candidate.
  expected = np.mean([_nll([2.0], 0), _nll([1.6], 0)])
  got = losses.dual_encoder_loss(q, clips, mask, np.array([0, 0, 2]), np.array([1, 1, 0], np.float32), 2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def _random_embeddings(b=8, k=3, e=4):
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  return dict(q=unit(rng.normal(size=(b, e))).astype(np.float32), clips=unit(rng.normal(size=(b, k, e))).astype(np.float32),
              mask=(rng.random((b, k)) > 0.3).astype(np.float32), video=np.array([0, 1, 2, 2, 3, 4, 5, 6]),
              weights=np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32))


def _sharded_loss(arrays):
  """The loss under jit over a mesh of every device of every process, the batch sharded over it."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  n = arrays["q"].shape[0] // jax.process_count()
  lo = jax.process_index() * n
  put = lambda x: jax.make_array_from_process_local_data(sharding, x[lo:lo + n], x.shape)
  fn = jax.jit(lambda a, b, c, d, w: losses.dual_encoder_loss(a, b, c, d, w, jnp.float32(10.0)))
  return float(fn(put(arrays["q"]), put(arrays["clips"]), put(arrays["mask"]), put(arrays["video"]),
                  put(arrays["weights"])))


def loss_worker(out_path):
  with open(out_path, "w") as f:
    json.dump({"loss": _sharded_loss(_random_embeddings()), "devices": jax.device_count()}, f)


def test_first_stage_loss_gathers_every_video_of_the_global_batch_across_processes(tmp_path):
  single = _sharded_loss(_random_embeddings())
  outs = run_processes("test_two_stage:loss_worker", tmp_path, devices_per_process=2)
  for out in outs:
    r = json.load(open(out))
    assert r["devices"] == 4
    np.testing.assert_allclose(r["loss"], single, rtol=1e-6)
  # Not the mean of per-process losses over half the videos each:
  a = _random_embeddings()
  halves = [float(losses.dual_encoder_loss(*(a[k][s] for k in ("q", "clips", "mask", "video", "weights")), 10.0))
            for s in (slice(0, 4), slice(4, 8))]
  assert abs(np.mean(halves) - single) > 1e-3


# -- the index ------------------------------------------------------------------------


def _brute_force_order(query_vectors, clip_vectors, clip_mask):
  """[Q, V] videos by max clip inner product, best first (numpy)."""
  sim = np.einsum("qe,vke->qvk", query_vectors, clip_vectors)
  sim = np.where(clip_mask[None] > 0, sim, -np.inf).max(-1)
  return np.argsort(-sim, axis=1, kind="stable"), sim


def test_exact_index_lists_the_brute_force_ranking_and_recall_is_monotone():
  rng = np.random.default_rng(1)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
  clips, mask = unit(rng.normal(size=(40, 4, 16))), (rng.random((40, 4)) > 0.25).astype(np.float32)
  mask[:, 0] = 1
  queries, gt = unit(rng.normal(size=(25, 16))), rng.integers(0, 40, 25)
  index = first_stage.FirstStageIndex.build(clips, mask, kind="flat")
  positions, scores = index.search(queries, 40)
  order, sim = _brute_force_order(queries, clips, mask)
  np.testing.assert_allclose(scores, np.take_along_axis(sim, order, 1), rtol=1e-5)
  assert (positions == order).mean() > 0.99  # equal up to exact float ties
  ks = list(range(1, 41))
  recall = first_stage.recall_at(positions, gt, ks)
  brute = {f"recall@{k}": round(100 * float(np.mean([g in order[i, :k] for i, g in enumerate(gt)])), 2) for k in ks}
  assert recall == brute
  values = [recall[f"recall@{k}"] for k in ks]
  assert values == sorted(values) and values[-1] == 100.0 and values[0] < 100.0


def test_an_approximate_index_finds_most_exact_neighbours():
  rng = np.random.default_rng(2)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
  centres = unit(rng.normal(size=(50, 32)))
  clips = unit(centres[rng.integers(0, 50, (4000, 2))] + 0.05 * rng.normal(size=(4000, 2, 32)))
  mask = np.ones((4000, 2), np.float32)
  queries = unit(centres[rng.integers(0, 50, 30)] + 0.05 * rng.normal(size=(30, 32)))
  approx = first_stage.FirstStageIndex.build(clips, mask, kind="ivfpq", pq_bytes=8, nprobe=16)
  assert approx.kind == "ivfpq" and approx.nbytes() < first_stage.FirstStageIndex.build(clips, mask).nbytes() / 4
  exact_top, _ = first_stage.FirstStageIndex.build(clips, mask, kind="flat").search(queries, 10)
  approx_top, _ = approx.search(queries, 10)
  overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_top, approx_top)])
  assert overlap > 0.2, overlap  # a cluster of ~80 near-equal videos: any 10 of them are right answers
  assert first_stage.choose_kind(10) == "flat" and first_stage.choose_kind(10 ** 7) == "ivfpq"


# -- two-stage retrieval on a trained model ---------------------------------------------


@pytest.fixture(scope="module")
def scoring(trained_workdir):
  from hammer_jax import restore
  from hammer_jax.retrieval.evaluator import Evaluator
  from hammer_jax.retrieval.scorer import PairScorer
  config, data, model, params, step = restore.restore(trained_workdir)
  scorer = PairScorer(model, batch_size=8, decoding=config.model.decoding)
  ev = Evaluator(scorer, config, data, config.data.eval_split, top_k=100)
  corpus = ev.encode_corpus(params)
  return dict(config=config, scorer=scorer, params=params, ev=ev, corpus=corpus,
              index=ev.first_stage_index(params, corpus))


def _retrieve(s, **kw):
  from hammer_jax.retrieval.retrieve import retrieve
  ev = s["ev"]
  return retrieve(s["scorer"], s["params"], s["corpus"], ev.queries.token_ids, top_k=100,
                  max_query_len=ev.spec.max_query_len, query_rows=ev.rows, ground_truth=ev.queries.video_index, **kw)


def test_two_stage_with_every_video_as_candidate_is_the_exhaustive_ranking(scoring):
  full = _retrieve(scoring)
  two = _retrieve(scoring, first_stage=scoring["index"], candidates=len(scoring["corpus"]))
  np.testing.assert_array_equal(two.vr_rank_video, full.vr_rank_video)
  np.testing.assert_allclose(two.vr_score, full.vr_score, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(two.gt_rank, full.gt_rank)
  np.testing.assert_array_equal(two.vcmr[..., 0], full.vcmr[..., 0])
  np.testing.assert_allclose(two.vcmr[..., 1:3], full.vcmr[..., 1:3])
  np.testing.assert_allclose(two.vcmr[..., 3], full.vcmr[..., 3], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(two.svmr, full.svmr)
  assert full.first_stage.shape[1] == 0 and two.first_stage.shape[1] == len(scoring["corpus"])


def test_two_stage_rescores_only_the_first_stages_candidates(scoring):
  k = 4
  two = _retrieve(scoring, first_stage=scoring["index"], candidates=k)
  assert two.vcmr.shape[1] == k
  for q in range(len(two.query_rows)):
    candidates = set(two.first_stage[q, :k].tolist())
    assert set(two.vr_rank_video[q, :k].tolist()) == candidates
    assert set(two.vcmr[q, :, 0].astype(int).tolist()) <= candidates
    # Past the candidates, the VR list follows the first stage, below every candidate.
    np.testing.assert_array_equal(two.vr_rank_video[q, k:], [v for v in two.first_stage[q] if v not in candidates])
    assert two.vr_score[q, k:].max() < two.vr_score[q, :k].min()
  # p(v|h) is the softmax over the candidates: each query's moment probabilities sum to at most 1.
  assert np.all(np.exp(two.vcmr[..., 3]).sum(1) <= 1 + 1e-6)
  # And it is exactly that softmax, recomputed here: f(v, h) of every video from the scorer's exhaustive
  # VR pass, normalised over the K candidates only (a non-candidate has p = 0: it is not in the list),
  # plus the best moment's log p_start + log p_end in that video.
  from hammer_jax.data import input_pipeline
  s, ev, corpus = scoring, scoring["ev"], scoring["corpus"]
  rows = np.asarray(two.query_rows)
  q_parts = s["scorer"].encode_queries(s["params"], input_pipeline.eval_query_batches(
      [ev.queries.token_ids[r] for r in rows], ev.spec.max_query_len, s["scorer"].batch_size, process_index=0,
      process_count=1))
  f_all = np.asarray(s["scorer"].vr_scores(s["params"], q_parts, corpus), np.float64)      # [Q, N]
  assert f_all.shape[1] == len(corpus) > k
  cand_pos = np.stack([corpus.positions_of(two.first_stage[q, :k]) for q in range(len(rows))])   # [Q, K]
  loc = s["scorer"].localise(s["params"], q_parts, corpus, np.repeat(np.arange(len(rows)), k), cand_pos.reshape(-1),
                             k=1)
  best_moment = np.asarray(loc["log_score"], np.float64).reshape(len(rows), k)
  for q in range(len(rows)):
    f = f_all[q, cand_pos[q]]
    log_p_v = f - (f.max() + math.log(np.exp(f - f.max()).sum()))
    assert abs(np.exp(log_p_v).sum() - 1) < 1e-9
    expected = dict(zip(two.first_stage[q, :k].tolist(), log_p_v + best_moment[q]))
    got = {int(v): score for v, score in zip(two.vcmr[q, :, 0], two.vcmr[q, :, 3])}
    assert got.keys() == expected.keys()
    for v in expected:
      assert got[v] == pytest.approx(expected[v], abs=1e-4), (q, v, got, expected)


def test_evaluation_reports_the_first_stage_recall_in_both_modes(scoring):
  from hammer_jax.retrieval.evaluator import Evaluator
  s = scoring
  exhaustive = dict(s["ev"].run(s["params"]))
  two = dict(Evaluator(s["scorer"], s["config"], s["ev"].data, s["ev"].split, top_k=100, retrieval="two_stage",
                       candidates=len(s["corpus"])).run(s["params"]))
  assert {k for k in exhaustive if k.startswith("first_stage/")} == {f"first_stage/recall@{k}" for k in
                                                                      Evaluator.RECALL_AT}
  assert exhaustive["first_stage/recall@10"] == two["first_stage/recall@10"]
  assert exhaustive["VR/r10"] == two["VR/r10"] and exhaustive["VCMR/0.5-r10"] == two["VCMR/0.5-r10"]


# -- the index binary --------------------------------------------------------------------


@pytest.fixture()
def own_workdir(trained_workdir, tmp_path):
  """A copy: an index in the shared workdir would turn other tests' searches two-stage."""
  w = tmp_path / "w"
  shutil.copytree(trained_workdir, w, ignore=shutil.ignore_patterns("index", "search_index", "eval"))
  return str(w)


def _index_cmd(workdir, *flags):
  return [sys.executable, "-m", "hammer_jax.index", f"--workdir={workdir}", *flags]


def test_index_round_trip_and_search_uses_it(own_workdir, scoring):
  from hammer_jax import index as index_binary
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  from hammer_jax.search import MomentSearcher
  path = index_binary.build_index(own_workdir, progress=False)
  loaded, meta = FirstStageIndex.load(path)
  assert meta["step"] == 6 and meta["num_videos"] == len(scoring["corpus"]) and loaded.kind == "flat"
  vectors = np.random.default_rng(0).normal(size=(3, loaded.index.d)).astype(np.float32)
  np.testing.assert_array_equal(loaded.search(vectors, 5)[0], scoring["index"].search(vectors, 5)[0])
  searcher = MomentSearcher(own_workdir)
  # The candidates' parts come from the index's parts store: no in-memory parts cache is built.
  assert (searcher.retrieval, searcher.index_status) == ("two_stage", "store")
  assert not os.path.exists(os.path.join(own_workdir, "search_index"))
  assert MomentSearcher(own_workdir, retrieval="exhaustive").retrieval == "exhaustive"
  assert len(searcher.search("the dog runs", top_k=3)) == 3


def test_a_mismatched_index_is_refused_in_one_line(own_workdir):
  from hammer_jax import index as index_binary
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  from hammer_jax.search import MomentSearcher, SearchError
  path = index_binary.build_index(own_workdir, progress=False)
  index, meta = FirstStageIndex.load(path)
  for key, what in (("params_fingerprint", "checkpoint weights"), ("vocab_sha256", "vocabulary")):
    index.save(path, dict(meta, **{key: "0" * 64}))
    with pytest.raises(SearchError, match=what) as e:
      MomentSearcher(own_workdir)
    assert "\n" not in str(e.value) and "hammer_jax.index" in str(e.value)
  out = subprocess.run([sys.executable, "-m", "hammer_jax.search", f"--workdir={own_workdir}", "--query=a dog"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and out.stderr.strip().splitlines()[-1].startswith("error: ") and "vocabulary" in out.stderr
  with pytest.raises(index_files.IndexMismatchError, match="checkpoint step"):
    index_files.check_meta(path, meta, dict(meta, step=7))


def test_a_killed_index_build_resumes_and_gives_the_same_index(own_workdir, tmp_path):
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(_index_cmd(own_workdir, "--videos_per_shard=1"), cwd=REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  parts = os.path.join(own_workdir, "index")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    shards = [f for _, _, fs in os.walk(parts) for f in fs if f.startswith("shard-") and f.endswith(".npz")]
    if len(shards) >= 2:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
  # The shards finished before the kill, by identity: the resumed build must not encode them again.
  finished = {os.path.join(d, f): os.stat(os.path.join(d, f)) for d, _, fs in os.walk(parts) for f in fs
              if f.startswith("shard-") and f.endswith(".npz")}
  finished = {p: (st.st_ino, st.st_mtime_ns) for p, st in finished.items()}
  assert len(finished) >= 2
  # ... nor write their parts into the store again (one video a shard: shard s is the files c.<s>.*).
  shard_ids = [int(os.path.basename(p)[len("shard-"):-len(".npz")]) for p in finished]
  [store] = [os.path.join(parts, f) for f in os.listdir(parts) if f.endswith(".store")]
  stored = [os.path.join(store, "done", f"shard-{s:05d}.json") for s in shard_ids] + [
      os.path.join(store, "parts", key, name) for key in ("tokens", "frame_mask")
      for name in os.listdir(os.path.join(store, "parts", key)) if name.split(".")[1] in map(str, shard_ids)]
  assert len(stored) == 3 * len(shard_ids)
  finished.update({p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in stored})
  log = tmp_path / "resumed.log"
  with open(log, "w") as err:
    resumed = subprocess.Popen(_index_cmd(own_workdir, "--videos_per_shard=1"), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=err, text=True)
    rewritten, deadline = set(), time.time() + 600
    while resumed.poll() is None and time.time() < deadline:
      for p, identity in finished.items():   # until the saved index removes them, each keeps its file
        try:
          st = os.stat(p)
        except FileNotFoundError:
          continue
        if (st.st_ino, st.st_mtime_ns) != identity:
          rewritten.add(os.path.relpath(p, parts))
      time.sleep(0.02)
    resumed.wait(timeout=max(1, deadline - time.time()))
  stderr = log.read_text()
  assert resumed.returncode == 0, stderr[-3000:]
  assert not rewritten, f"the resumed build wrote again the shards finished before the kill: {sorted(rewritten)}"
  [name] = [f for f in os.listdir(parts) if f.endswith(".npz")]
  _, meta = FirstStageIndex.load(os.path.join(parts, name))
  num_videos, left = meta["num_videos"], meta["num_videos"] - len(shard_ids)   # one video a shard
  assert f"resuming, {len(shard_ids)} of this process's {num_videos} shards already encoded" in stderr, stderr[-3000:]
  # The work counted: the progress line counts the remaining videos only, up to its total and no further.
  progress = [(int(a), int(b)) for a, b in re.findall(r"index: encoded (\d+)/(\d+) videos", stderr)]
  assert progress and {total for _, total in progress} == {left}, progress
  assert [done for done, _ in progress] == list(range(1, left + 1)), progress
  assert not [f for f in os.listdir(parts) if f.endswith(".parts")]  # the shards are gone once the index is saved
  assert parts_store.open_store(store).meta["fingerprint"] == meta["fingerprint"]  # stamped, last
  shutil.move(os.path.join(parts, name), tmp_path / "resumed.npz")
  fresh = subprocess.run(_index_cmd(own_workdir), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  import faiss
  a, _ = FirstStageIndex.load(str(tmp_path / "resumed.npz"))
  b, _ = FirstStageIndex.load(os.path.join(parts, name))
  assert a.index.ntotal == b.index.ntotal > 0
  np.testing.assert_array_equal(faiss.vector_to_array(a.index.id_map), faiss.vector_to_array(b.index.id_map))
  vectors = lambda x: faiss.downcast_index(x.index.index).reconstruct_n(0, x.index.ntotal)
  np.testing.assert_allclose(vectors(a), vectors(b), atol=1e-6)


def test_the_head_trains_alone_on_a_model_started_from_another_workdir(trained_workdir, synthetic_prepared, tmp_path):
  """init_from copies the parameters; optim.train_only=dual_encoder moves the head and nothing else."""
  from helpers import restored_params, tiny_config
  from hammer_jax.train import loop
  c = tiny_config(synthetic_prepared.path, **{"optim.num_steps": 3, "checkpoint_every_steps": 3,
                                               "log_every_steps": 3, "eval.every_steps": 0})
  c.init_from = trained_workdir
  c.optim.train_only = "dual_encoder"
  c.optim.warmup_fraction = 0.01
  c.optim.decay_boundaries = (0.5, 0.75)
  loop.train_and_evaluate(c, str(tmp_path / "head"))
  before, after = restored_params(trained_workdir, 6), restored_params(str(tmp_path / "head"), 3)
  moved = {}
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree_util.tree_leaves(after)):
    moved[jax.tree_util.keystr(path)] = float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
  head = {k: v for k, v in moved.items() if "'dual_encoder'" in k}
  rest = {k: v for k, v in moved.items() if "'dual_encoder'" not in k}
  assert head and min(head.values()) > 0, head
  assert rest and max(rest.values()) == 0.0, sorted(rest.items(), key=lambda kv: -kv[1])[:3]
