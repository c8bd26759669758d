"""Moment search: agrees with the evaluator and retrieve(), the index is built once, the CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT
from hammer_jax import search
from hammer_jax.data import input_pipeline, prepared_data
from hammer_jax.retrieval import inference
from hammer_jax.retrieval.evaluator import Evaluator
from hammer_jax.retrieval.scorer import PairScorer

TOP_K = 5
ROW = 3  # a query of the val split, searched verbatim


@pytest.fixture(scope="module")
def searcher(trained_workdir):
  return search.MomentSearcher(trained_workdir)


@pytest.fixture(scope="module")
def reference(searcher):
  """The same corpus and query encoded by a scorer of its own, from the split's stored tokens."""
  scorer = PairScorer(searcher.model, batch_size=8)
  ev = Evaluator(scorer, searcher.config, searcher.data, searcher.split, top_k=TOP_K)
  corpus = ev.encode_corpus(searcher.params)
  q_parts = scorer.encode_queries(searcher.params, input_pipeline.eval_query_batches(
      [ev.queries.token_ids[ROW]], searcher.config.data.max_query_len, scorer.batch_size))
  return scorer, ev, ev.queries, corpus, q_parts


def test_search_agrees_with_the_scorer(searcher, reference):
  """Eq. 2 and the decoding, recomputed from the pair programs: the moments search returns."""
  scorer, _, queries, corpus, q_parts = reference
  text = queries.desc[ROW]
  # The typed query tokenises to what preparation stored (before the pipeline's truncation keeping [SEP]).
  np.testing.assert_array_equal(searcher.tokenize(text), queries.token_ids[ROW])

  moments = searcher.search(text, TOP_K)
  assert [m.rank for m in moments] == list(range(1, TOP_K + 1))
  scores = [m.score for m in moments]
  assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)

  f = scorer.vr_scores(searcher.params, q_parts, corpus)[0]                   # [V]
  log_p_v = f - f.max() - np.log(np.exp(f - f.max()).sum())
  rows = corpus.positions_of(np.array([m.video_position for m in moments]))
  loc = scorer.localise(searcher.params, q_parts, corpus, np.zeros(len(rows), np.int64), rows, k=1)
  names = searcher.data.split(searcher.split)["video_names"]
  for m, r, start, end, log_se in zip(moments, rows, loc["start"], loc["end"], loc["log_score"]):
    assert m.vid_name == names[corpus.video_index[r]]
    assert m.score == pytest.approx(np.exp(log_p_v[r] + log_se), rel=1e-4, abs=1e-12)
    delta, dur = corpus.frame_seconds[r], corpus.duration[r]
    assert m.st == pytest.approx(min(start * delta, dur), abs=1e-4)
    assert m.ed == pytest.approx(min((end + 1) * delta, dur), abs=1e-4)
    assert 0 <= m.st < m.ed <= dur + 1e-4
  # One moment per video, from the top_k videos by VR score, ties in corpus order.
  assert sorted(rows.tolist()) == sorted(inference.rank_videos(f[None])[0, :TOP_K].tolist())


def test_search_returns_the_evaluations_moments(searcher, reference, tmp_path):
  """A val query typed into search gives exactly the VCMR list the evaluation wrote for it."""
  _, ev, queries, _, _ = reference
  list(ev.run(searcher.params, out_dir=str(tmp_path)))
  entry = next(e for e in json.load(open(tmp_path / "predictions.json"))["VCMR"]
               if e["desc_id"] == int(queries.desc_id[ROW]))
  idx = {v: k for k, v in json.load(open(tmp_path / "predictions.json"))["video2idx"].items()}
  moments = searcher.search(queries.desc[ROW], TOP_K)
  assert [idx[p[0]] for p in entry["predictions"]] == [m.vid_name for m in moments]
  for p, m in zip(entry["predictions"], moments):
    assert (p[1], p[2]) == (pytest.approx(m.st, abs=1e-4), pytest.approx(m.ed, abs=1e-4))
    assert p[3] == pytest.approx(m.score, rel=1e-5, abs=1e-12)


def test_index_is_built_once_and_reused(trained_workdir, searcher, monkeypatch):
  """Counts calls of the video-only encoding (not a timing): queries and later searchers load the index."""
  calls = []
  encode = PairScorer.encode_videos
  monkeypatch.setattr(PairScorer, "encode_videos", lambda self, *a: calls.append(1) or encode(self, *a))
  queries = prepared_data.read_queries(searcher.data, searcher.split)
  searcher.search(queries.desc[0], TOP_K)
  searcher.search(queries.desc[1], TOP_K)
  assert calls == []                                                          # queries reuse the corpus
  path = searcher.index_path()
  assert os.path.dirname(path) == os.path.join(trained_workdir, "search_index")
  assert os.path.basename(path).endswith(f"_step{searcher.step}.npz")
  meta = json.load(open(path[:-len(".npz")] + ".json"))
  assert (meta["corpus_path"], meta["split"], meta["step"], meta["video_dim"], meta["subtitle_dim"],
          meta["vocab_sha256"]) == (searcher.data.path, searcher.split, searcher.step, searcher.data.video_dim,
                                    searcher.data.subtitle_dim, searcher.data.manifest["vocab_sha256"])

  second = search.MomentSearcher(trained_workdir)                             # what a new process does
  assert (len(calls), second.index_status) == (0, "loaded")
  assert set(second.corpus.parts) == set(searcher.corpus.parts)
  for key, value in searcher.corpus.parts.items():
    np.testing.assert_array_equal(second.corpus.parts[key], value)
  for name in ("video_index", "duration", "frame_seconds", "frame_mask"):
    np.testing.assert_array_equal(getattr(second.corpus, name), getattr(searcher.corpus, name))

  assert search.MomentSearcher(trained_workdir, rebuild_index=True).index_status == "built"
  assert len(calls) == 1
  with np.load(path) as z:                                                    # an index of other weights/data
    arrays = dict(z)
  arrays["meta"] = np.array(json.dumps(dict(json.loads(str(arrays["meta"])), fingerprint="other")))
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  assert search.MomentSearcher(trained_workdir).index_status == "built" and len(calls) == 2
  with open(path, "wb") as f:                                                 # a damaged index is rebuilt
    f.write(b"not an npz")
  assert search.MomentSearcher(trained_workdir).index_status == "built" and len(calls) == 3
  os.replace(path, path + ".away")
  with pytest.raises(search.SearchError, match="--require_index"):
    search.MomentSearcher(trained_workdir, require_index=True)
  os.replace(path + ".away", path)                                            # other tests expect an index
  assert len(calls) == 3


def test_index_fingerprint_sees_retraining_and_re_prepared_data(searcher):
  """Any changed weight (not only the first values of an array) or a rebuilt corpus invalidates the index."""
  import jax
  base = searcher._index_meta()["fingerprint"]
  original = searcher.params
  try:
    leaves, tree = jax.tree_util.tree_flatten(original)
    big = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
    changed = np.array(leaves[big], copy=True)
    changed.reshape(-1)[-1] += 1e-3                                           # the last value of the biggest array
    searcher.params = jax.tree_util.tree_unflatten(tree, leaves[:big] + [changed] + leaves[big + 1:])
    assert searcher._index_meta()["fingerprint"] != base
  finally:
    searcher.params = original
  assert searcher._index_meta()["fingerprint"] == base
  manifest = searcher.data.manifest
  saved = manifest.get("build_args")
  try:
    manifest["build_args"] = dict(saved or {}, rebuilt=True)                   # data prepared again, differently
    assert searcher._index_meta()["fingerprint"] != base
  finally:
    manifest["build_args"] = saved


def test_bad_queries_and_splits(trained_workdir, searcher):
  for text in ("", "   \t"):
    with pytest.raises(search.SearchError, match="empty query"):
      searcher.search(text)
  for text in ("\U0001F600\U0001F680", "\u2603 \U0001F3B8"):           # emoji: nothing but [UNK]
    with pytest.raises(search.SearchError, match=r"WordPiece.*all \[UNK\]"):
      searcher.search(text)
  with pytest.raises(prepared_data.PreparedDataError, match="split 'nope' was never prepared"):
    search.MomentSearcher(trained_workdir, split="nope")


def test_search_says_what_it_changed(searcher):
  long = " ".join(["the man opens the door"] * 10)
  moments = searcher.search(long, 3)
  limit = searcher.config.data.max_query_len
  assert len(moments) == 3
  assert any(f"the first {limit - 2}" in n for n in searcher.last_notices), searcher.last_notices
  moments = searcher.search("a dog", 50)
  assert len(moments) == len(searcher.corpus) < 50
  assert any(f"returning {len(searcher.corpus)}" in n for n in searcher.last_notices)
  searcher.search("a dog", 2)
  assert searcher.last_notices == []


def _run(workdir, *flags, stdin=None):
  return subprocess.run([sys.executable, "-m", "hammer_jax.search", f"--workdir={workdir}", *flags], cwd=REPO_ROOT,
                        input=stdin, capture_output=True, text=True, timeout=300)


def test_cli_json_and_rebuild_index(trained_workdir, searcher):
  query = prepared_data.read_queries(searcher.data, "val").desc[ROW]
  out = _run(trained_workdir, f"--query={query}", "--json", "--rebuild_index", "--top_k=3")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "index: built" in out.stderr and "--rebuild_index" in out.stderr
  results = json.loads(out.stdout)
  want = searcher.search(query, 3)
  assert [r["rank"] for r in results] == [1, 2, 3]
  assert [r["vid_name"] for r in results] == [m.vid_name for m in want]
  assert [r["score"] for r in results] == pytest.approx([m.score for m in want], rel=1e-4)
  assert all(set(r) == {"rank", "vid_name", "st", "ed", "score"} for r in results)


def test_cli_text_subtitles_and_interactive(trained_workdir, synthetic_prepared, searcher, tmp_path):
  """One process: --query, then two queries from stdin (prompt "query> "), an empty line ends it."""
  names = searcher.data.split("val")["video_names"]
  subs = tmp_path / "subs.jsonl"
  subs.write_text("".join(json.dumps({"vid_name": n, "sub": [{"start": 0.0, "end": 2.0, "text": f"{n} opening"},
                                                              {"start": 2.0, "end": 99.0, "text": f"{n} rest"}]}) + "\n"
                          for n in names))
  query = prepared_data.read_queries(searcher.data, "val").desc[ROW]
  out = _run(trained_workdir, f"--query={query}", f"--prepared_dir={synthetic_prepared.path}", "--split=val",
             f"--subtitles={subs}", "--top_k=3", "--interactive",
             stdin="a person walks\nsomeone talks on the phone\n\nnever read\n")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "index: loaded" in out.stderr                                         # the workdir's corpus: same index
  first = out.stdout.split("query: ")[1]
  top = searcher.search(query, 3)[0]
  assert top.vid_name in first and f"{top.st:.1f}s" in first and f"{top.ed:.1f}s" in first
  assert f"{top.vid_name} rest" in first                                        # the overlapping subtitle line
  assert out.stdout.count("query: ") == 3 and "never read" not in out.stdout
  assert "query: a person walks" in out.stdout and "query: someone talks on the phone" in out.stdout
  assert out.stderr.count("query> ") == 3


def test_cli_errors_are_one_line(trained_workdir, tmp_path):
  out = _run(trained_workdir, "--query=   ")
  assert (out.returncode, out.stderr.strip()) == (1, "error: empty query")
  # A corpus prepared from TVR-layout files with 20-d visual features (the model's data has 16).
  from data_prep import make_synthetic, tvr
  make_synthetic.make_synthetic_corpus(str(tmp_path / "raw"), num_train_videos=2, num_val_videos=2,
                                       num_test_videos=2, visual_dim=20, subtitle_dim=8, min_duration=9.0,
                                       max_duration=12.0, verbose=False)
  tvr.prepare_tvr(str(tmp_path / "prep"), split_files={"val": str(tmp_path / "raw" / "tvr_val_release.jsonl")},
                  video_feature=[str(tmp_path / "raw" / "video_feature.h5")],
                  subtitle_feature=str(tmp_path / "raw" / "sub_feature.h5"))
  out = _run(trained_workdir, "--query=a person walks", f"--prepared_dir={tmp_path / 'prep'}")
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "video 20 / subtitle 8" in last, out.stderr[-2000:]
  assert re.search(r"expects (video )?16 / (subtitle )?8", last), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
