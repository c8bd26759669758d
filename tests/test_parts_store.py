"""The parts store: two-stage search reads its K candidates' parts from it and never holds the corpus's."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from hammer_jax import index as index_binary
from hammer_jax.retrieval import index_files, parts_store
from hammer_jax.retrieval.corpus import Corpus
from hammer_jax.retrieval.scorer import PairScorer
from hammer_jax.retrieval.searcher import CorpusSearcher
from hammer_jax.search import MomentSearcher, SearchError

K = 3                 # first-stage candidates (the val corpus has 12 videos)
VIDEOS_PER_SHARD = 5  # 3 build shards of 4 videos
QUERIES = ("the man opens the door", "a dog runs", "someone talks on the phone", "a person walks away")


def _copy(trained_workdir, dst):
  shutil.copytree(trained_workdir, dst, ignore=shutil.ignore_patterns("index", "search_index", "eval"))
  return str(dst)


def _store_dir(workdir):
  [path] = glob.glob(os.path.join(workdir, "index", "*.store"))
  return path


@pytest.fixture(scope="module")
def built(trained_workdir, tmp_path_factory):
  """A workdir with a first-stage index and its store; the store-backed searcher made before anything else."""
  w = _copy(trained_workdir, tmp_path_factory.mktemp("store") / "w")
  index_binary.build_index(w, videos_per_shard=VIDEOS_PER_SHARD, progress=False)
  stored = MomentSearcher(w, candidates=K)
  return dict(workdir=w, store=_store_dir(w), stored=stored,
              parts_cache_built=os.path.exists(os.path.join(w, "search_index")))


def _searcher(built, **options):
  """A searcher of the built workdir on the model the first one restored (what a new process gets, minus the
  restore)."""
  s = built["stored"]
  return CorpusSearcher(built["workdir"], config=s.config, model_data=s.model_data, model=s.model, params=s.params,
                        step=s.step, tokenizer=s.tokenizer, candidates=K, **options)


@pytest.fixture(scope="module")
def in_memory(built):
  """The same two-stage search with the store moved away: today's path (the parts cache in memory)."""
  away = built["store"] + ".away"
  os.rename(built["store"], away)
  try:
    return _searcher(built)
  finally:
    os.rename(away, built["store"])


def test_two_stage_search_through_the_store_is_the_in_memory_search(built, in_memory):
  stored = built["stored"]
  assert (stored.retrieval, stored.index_status) == ("two_stage", "store")
  assert isinstance(stored.corpus, parts_store.StoredCorpus)
  assert (in_memory.retrieval, in_memory.index_status) == ("two_stage", "built")
  assert isinstance(in_memory.corpus, Corpus)
  # The stored parts are the cached parts, bit for bit, in the dtype the model computes them in (float32 here).
  rows = np.arange(len(in_memory.corpus))
  got = stored.corpus.take(rows[::-1])
  for key, value in in_memory.corpus.parts.items():
    assert got[key].dtype == value.dtype
    np.testing.assert_array_equal(got[key], value[::-1])
  for name in ("video_index", "duration", "frame_seconds"):
    np.testing.assert_array_equal(getattr(stored.corpus, name), getattr(in_memory.corpus, name))
  for text in QUERIES:
    a, b = stored.search(text, K), in_memory.search(text, K)
    assert len(a) == K and [m.vid_name for m in a] == [m.vid_name for m in b]
    for x, y in zip(a, b):
      assert (x.st, x.ed, x.video_position) == (pytest.approx(y.st, abs=1e-5), pytest.approx(y.ed, abs=1e-5),
                                                y.video_position)
      assert x.score == pytest.approx(y.score, rel=1e-5, abs=1e-12)


def _bytes_read():
  import tensorstore as ts
  return sum(v.get("value", 0) for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read")
             for v in m["values"])


def test_two_stage_reads_only_the_candidates_parts(built, monkeypatch):
  """Per query the store reads K videos (counted by the store and by TensorStore's byte counter), never V."""
  stored, corpus = built["stored"], built["stored"].corpus
  assert not built["parts_cache_built"]          # the store-backed searcher built no in-memory cache
  monkeypatch.setattr(PairScorer, "encode_videos", lambda *a, **k: pytest.fail("the corpus was encoded"))
  v, per_video = len(corpus), corpus.layout.bytes_per_video()
  for text in QUERIES:
    rows, takes, read = corpus.rows_read, corpus.takes, _bytes_read()
    stored.search(text, K)
    assert corpus.rows_read - rows == K, (corpus.rows_read - rows, K)
    assert corpus.takes - takes >= 1
    # K videos plus the files' chunk indices (16 bytes a video, all three files at most).
    assert _bytes_read() - read <= K * per_video + 16 * v * len(corpus.layout.parts), (_bytes_read() - read)
  # Nothing in the searcher holds every video's parts: the largest array it keeps is a per-video table.
  arrays = [x for obj in (stored, corpus) for x in vars(obj).values() if isinstance(x, np.ndarray)]
  assert arrays and max(x.nbytes for x in arrays) <= 8 * v
  with pytest.raises(parts_store.StoreError, match="exhaustive search needs the in-memory parts cache"):
    corpus.parts  # pylint: disable=pointless-statement


def test_a_killed_store_build_resumes_without_re_encoding_finished_shards(trained_workdir, built, tmp_path,
                                                                          monkeypatch):
  w = _copy(trained_workdir, tmp_path / "w")
  encoded, shard = [], parts_store.StoreWriter.shard

  class Killed(Exception):
    pass

  def counting(self, s):
    encoded.append(s)
    if s == 1 and kill:
      raise Killed()  # the build dies as shard 1 starts: shard 0's files and marker are written
    return shard(self, s)

  monkeypatch.setattr(parts_store.StoreWriter, "shard", counting)
  kill = True
  with pytest.raises(Killed):
    index_binary.build_index(w, videos_per_shard=VIDEOS_PER_SHARD, progress=False)
  store = _store_dir(w)
  assert encoded == [0, 1] and parts_store.read_stamp(store) is None
  with pytest.raises(parts_store.StoreError, match="did not finish"):
    parts_store.open_store(store)
  finished = [os.path.join(store, "parts", "tokens", "c.0.0.0.0.0.0"), os.path.join(store, "parts", "frame_mask",
              "c.0.0.0"), os.path.join(store, "done", "shard-00000.json")]
  identity = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in finished}
  encoded.clear()
  kill = False
  index_binary.build_index(w, videos_per_shard=VIDEOS_PER_SHARD, progress=False)
  assert encoded == [1, 2], encoded                # shard 0 was not encoded (nor written) again
  assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in finished} == identity
  resumed, fresh = parts_store.open_store(store), built["stored"].corpus
  rows = np.arange(len(fresh))
  for key, value in fresh.take(rows).items():
    np.testing.assert_array_equal(resumed.take(rows)[key], value)
  assert resumed.meta["fingerprint"] == fresh.meta["fingerprint"]


def test_a_store_for_other_weights_or_data_is_refused_in_one_line(built):
  stamp = os.path.join(built["store"], parts_store.STAMP)
  original = open(stamp).read()
  try:
    for key, what in (("params_fingerprint", "checkpoint weights"), ("corpus_fingerprint", "prepared corpus")):
      with open(stamp, "w") as f:
        json.dump(dict(json.loads(original), **{key: "0" * 64, "fingerprint": "1" * 64}), f)
      with pytest.raises(SearchError, match=what) as e:
        _searcher(built)
      assert "\n" not in str(e.value) and "python -m hammer_jax.index" in str(e.value)
      assert str(e.value).startswith(built["store"])
  finally:
    with open(stamp, "w") as f:
      f.write(original)
  with pytest.raises(index_files.IndexMismatchError, match="checkpoint step"):
    index_files.check_meta(built["store"], json.loads(original), dict(json.loads(original), step=7))


def test_a_store_without_its_stamp_is_not_used(built, caplog):
  """A build killed before its last write (the stamp) leaves files that look whole: they are never read."""
  stamp = os.path.join(built["store"], parts_store.STAMP)
  os.rename(stamp, stamp + ".away")
  try:
    with pytest.raises(parts_store.StoreError, match="its build did not finish"):
      parts_store.open_store(built["store"])
    caplog.set_level("WARNING")
    searcher = _searcher(built)
  finally:
    os.rename(stamp + ".away", stamp)
  assert searcher.retrieval == "two_stage" and isinstance(searcher.corpus, Corpus)
  assert searcher.index_status in ("loaded", "built")
  assert any("has no store.json" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_two_stage_evaluation_reads_the_saved_index_and_store(built, monkeypatch):
  """The eval binary's two-stage path with `hammer_jax.index`'s files: the same metrics, no corpus encoded."""
  from hammer_jax.retrieval.evaluator import Evaluator, saved_two_stage
  s = built["stored"]
  saved = saved_two_stage(built["workdir"], s.config, s.data, s.split, s.step, s.params)
  assert saved is not None and isinstance(saved[1], parts_store.StoredCorpus)
  scorer = PairScorer(s.model, batch_size=8, decoding=s.config.model.decoding)
  make = lambda **kw: Evaluator(scorer, s.config, s.data, s.split, top_k=K, retrieval="two_stage", candidates=K, **kw)
  encoded = make().retrieve(s.params)
  monkeypatch.setattr(PairScorer, "encode_videos", lambda *a, **k: pytest.fail("the corpus was encoded"))
  stored = make(saved=saved).retrieve(s.params)
  np.testing.assert_array_equal(stored.vcmr[..., 0], encoded.vcmr[..., 0])
  np.testing.assert_allclose(stored.vcmr[..., 1:], encoded.vcmr[..., 1:], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(stored.gt_rank, encoded.gt_rank)
  np.testing.assert_allclose(stored.svmr, encoded.svmr, rtol=1e-5, atol=1e-5)


def test_an_index_built_without_a_store_keeps_the_in_memory_re_rank(trained_workdir, tmp_path, caplog):
  """--store=false: the FAISS index only (a stale store left there is removed); search falls back, with a notice."""
  w = _copy(trained_workdir, tmp_path / "w")
  path = index_binary.build_index(w, videos_per_shard=VIDEOS_PER_SHARD, store=False, progress=False)
  assert os.path.exists(path) and not glob.glob(os.path.join(w, "index", "*.store"))
  stale = path[:-len(".npz")] + ".store"
  os.makedirs(stale)
  with open(os.path.join(stale, parts_store.STAMP), "w") as f:
    json.dump({"fingerprint": "0" * 64}, f)
  index_binary.build_index(w, videos_per_shard=VIDEOS_PER_SHARD, store=False, progress=False)
  assert not os.path.exists(stale)
  caplog.set_level("WARNING")
  searcher = MomentSearcher(w, candidates=K)
  assert (searcher.retrieval, searcher.index_status) == ("two_stage", "built")
  assert any("--store=false" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert len(searcher.search(QUERIES[0], K)) == K
