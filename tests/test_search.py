"""Moment search: agrees with the evaluator and retrieve(), the index is built once, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from hammer_jax import prepared_data, retrieval, search
from hammer_jax.evaluator import Evaluator

TOP_K = 5
ROW = 3  # a query of the val split, searched verbatim


@pytest.fixture(scope="module")
def searcher(trained_workdir):
  return search.MomentSearcher(trained_workdir)


@pytest.fixture(scope="module")
def reference(searcher):
  """The same corpus and query encoded by the Evaluator itself, from the split's stored tokens."""
  ev = Evaluator(searcher.model, searcher.config, searcher.data, searcher.split, progress=False)
  queries = prepared_data.read_queries(searcher.data, searcher.split)
  corpus = ev.encode_corpus(searcher.params)
  q_parts = ev.encode_queries(searcher.params, queries, np.array([ROW]))
  return ev, queries, corpus, q_parts


def test_search_agrees_with_the_evaluator(searcher, reference):
  ev, queries, corpus, q_parts = reference
  text = queries.desc[ROW]
  # The typed query tokenises to what preparation stored (after the pipeline's truncation keeping [SEP]).
  stored = queries.token_ids[ROW]
  length = searcher.config.data.max_query_len
  stored = stored if len(stored) <= length else np.concatenate([stored[:length - 1], stored[-1:]])
  np.testing.assert_array_equal(searcher.tokenize(text), stored)

  moments = searcher.search(text, TOP_K)
  assert [m.rank for m in moments] == list(range(1, TOP_K + 1))
  scores = [m.score for m in moments]
  assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)

  f = ev.vr_scores(searcher.params, q_parts, corpus)[0]                       # [V]
  log_p_v = f - f.max() - np.log(np.exp(f - f.max()).sum())
  pos_of = {int(v): i for i, v in enumerate(corpus.video_index)}
  rows = np.array([pos_of[m.video_position] for m in moments])
  loc = ev.localise(searcher.params, q_parts, corpus, np.zeros(len(rows), np.int64), rows, k=1)
  names = searcher.data.split(searcher.split)["video_names"]
  for m, r, start, end, log_se in zip(moments, rows, loc["start"], loc["end"], loc["log_score"]):
    assert m.vid_name == names[corpus.video_index[r]]
    assert m.score == pytest.approx(np.exp(log_p_v[r] + log_se), rel=1e-4, abs=1e-12)
    delta, dur = corpus.frame_seconds[r], corpus.duration[r]
    assert m.st == pytest.approx(min(start * delta, dur), abs=1e-4)
    assert m.ed == pytest.approx(min((end + 1) * delta, dur), abs=1e-4)
    assert 0 <= m.st < m.ed <= dur + 1e-4
  # One moment per video, from the top_k videos by VR score (ties within float noise allowed).
  assert len(set(rows)) == TOP_K
  assert f[rows].min() >= np.sort(f)[-TOP_K] - 1e-5


def test_top_moments_match_retrieval_retrieve(searcher, reference):
  """Placeholder for the learning-based test (a trained demo model finding the planted moment):
  until then, search and `retrieval.retrieve` must rank the same videos and moments for the same query."""
  ev, queries, corpus, _ = reference
  r = retrieval.retrieve(ev, searcher.params, queries, top_k=TOP_K, query_rows=np.array([ROW]), corpus=corpus,
                         with_ground_truth=False)
  moments = searcher.search(queries.desc[ROW], TOP_K)
  vcmr = r.vcmr[0]                                                            # [K, 4] (video, st, ed, score)
  assert int(vcmr[0, 0]) == moments[0].video_position
  assert sorted(int(v) for v in vcmr[:, 0]) == sorted(m.video_position for m in moments)
  for (video, st, ed, score), m in zip(vcmr, moments):
    assert (int(video), st, ed) == (m.video_position, pytest.approx(m.st, abs=1e-4), pytest.approx(m.ed, abs=1e-4))
    assert score == pytest.approx(m.score, rel=1e-4, abs=1e-12)


def test_index_is_built_once_and_reused(trained_workdir, searcher, monkeypatch):
  """Counts calls of the video-only encoding (not a timing): queries and later searchers load the index."""
  calls = []
  encode = Evaluator.encode_corpus
  monkeypatch.setattr(Evaluator, "encode_corpus", lambda self, params: calls.append(1) or encode(self, params))
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


def test_bad_queries_and_splits(trained_workdir, searcher):
  for text in ("", "   \t"):
    with pytest.raises(search.SearchError, match="empty query"):
      searcher.search(text)
  with pytest.raises(prepared_data.PreparedDataError, match="split 'nope' was never prepared"):
    search.MomentSearcher(trained_workdir, split="nope")


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
  assert last.startswith("error: ") and "video 20 / subtitle 8" in last and "16 / 8" in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
