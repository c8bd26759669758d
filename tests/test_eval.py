"""The eval binary: cached scoring = plain scoring, prediction files round-trip, errors, multi-host."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO_ROOT
from multihost import run_processes
from hammer_jax import restore
from hammer_jax.data import input_pipeline, prepared_data
from hammer_jax.retrieval import predictions
from hammer_jax.retrieval.evaluator import Evaluator
from hammer_jax.retrieval.scorer import PairScorer


def _evaluator(model, config, data, split=None, top_k=10):
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding)
  return Evaluator(scorer, config, data, split or config.data.eval_split, top_k=top_k)


def _plain_vr_scores(model, params, data, split, spec, queries, rows):
  """f(v, h) by the training forward, one (query, video) pair at a time, nothing cached."""
  from hammer_jax.data import input_pipeline as ip
  videos = [b for b in ip.eval_video_batches(data, split, spec, 1, process_index=0, process_count=1)]
  qb = list(ip.eval_query_batches(queries.token_ids, spec.max_query_len, 1, process_index=0, process_count=1))

  @jax.jit
  def one(q, v):
    batch = {"query_ids": q["query_ids"], "query_mask": q["query_mask"], "video": v["video"],
             "frame_mask": v["frame_mask"], "neg_index": np.zeros((1, 0), np.int32),
             "mlm_positions": np.zeros((1, 1), np.int32)}
    if "subtitle" in v:
      batch["subtitle"] = v["subtitle"]
    return model.apply(params, batch)["vr_scores"][0, 0]

  out = np.zeros((len(rows), len(videos)), np.float32)
  for i, r in enumerate(rows):
    q = {k: qb[r][k] for k in ("query_ids", "query_mask")}
    for j, v in enumerate(videos):
      out[i, j] = float(one(q, {k: x for k, x in v.items() if k in ("video", "subtitle", "frame_mask")}))
  return out


def test_cached_scoring_equals_plain_scoring(trained_workdir):
  config, data, model, params, _ = restore.restore(trained_workdir)
  split = config.data.eval_split
  ev = _evaluator(model, config, data, split)
  queries = ev.queries
  rows = np.arange(6)
  corpus = ev.encode_corpus(params)
  q_parts = ev.scorer.encode_queries(params, input_pipeline.eval_query_batches(
      [queries.token_ids[r] for r in rows], config.data.max_query_len, ev.scorer.batch_size))
  cached = ev.scorer.vr_scores(params, q_parts, corpus)
  plain = _plain_vr_scores(model, params, data, split, ev.spec, queries, rows)
  np.testing.assert_allclose(cached, plain, atol=1e-5, rtol=0)
  k = min(100, len(corpus))
  np.testing.assert_array_equal(np.argsort(-cached, 1, kind="stable")[:, :k],
                                np.argsort(-plain, 1, kind="stable")[:, :k])
  # The scores depend on the pair: they vary over the videos of every query and over the queries of every video.
  assert np.std(cached, axis=1).min() > 0 and np.std(cached, axis=0).min() > 0


def _run_eval(workdir, *flags):
  return subprocess.run([sys.executable, "-m", "hammer_jax.eval", f"--workdir={workdir}", *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)


def test_eval_binary_writes_files_that_round_trip(trained_workdir):
  out = _run_eval(trained_workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  config, data, _, _, step = restore.restore(trained_workdir)
  d = os.path.join(trained_workdir, "eval", f"{config.data.eval_split}_step{step}")
  for name in ("predictions.json", "metrics.json", "metrics.md", "duration_buckets.md", "duration_buckets.png",
               "timelines.png"):
    assert os.path.getsize(os.path.join(d, name)) > 0, name
  sub = predictions.load_submission(os.path.join(d, "predictions.json"))
  queries = prepared_data.read_queries(data, config.data.eval_split)
  assert {e["desc_id"] for e in sub["VCMR"]} == set(queries.desc_id.tolist())
  n_videos = data.split(config.data.eval_split)["num_videos"]
  assert all(len(e["predictions"]) == min(100, n_videos) for e in sub["VR"])
  assert all(len(e["predictions"]) == min(config.eval.top_k_videos, n_videos) for e in sub["VCMR"])
  written = json.load(open(os.path.join(d, "metrics.json")))
  want = _independent_metrics(sub, queries)
  for key, value in want.items():
    task, name = key.split("/")
    assert written[task][name] == pytest.approx(value, abs=0.006), key
  assert "VR" in out.stdout and "median_rank" in out.stdout


def _iou(a, b):
  """IoU as the TVR evaluation computes it: in float32, the union being the hull."""
  (s1, e1), (s2, e2) = (np.float32(x) for x in a), (np.float32(x) for x in b)
  inter = max(np.float32(0), min(e1, e2) - max(s1, s2))
  union = max(e1, e2) - min(s1, s2)
  return inter / union if union > 0 else np.float32(0)


def _independent_metrics(sub, queries):
  """VR / VCMR / SVMR recalls and the VR median rank from the TVR definitions, one query at a time."""
  gt = {int(queries.desc_id[i]): (sub["video2idx"][queries.vid_name[i]], (float(queries.st[i]), float(queries.ed[i])))
        for i in range(len(queries))}
  out = {}
  vr = {e["desc_id"]: [p[0] for p in e["predictions"]] for e in sub["VR"]}
  ranks = [vr[q].index(v) + 1 if v in vr[q] else len(vr[q]) + 1 for q, (v, _) in gt.items()]
  out["VR/median_rank"] = float(np.median(ranks))
  for k in (1, 5, 10, 100):
    out[f"VR/r{k}"] = 100 * np.mean([r <= k for r in ranks])
  for task in ("VCMR", "SVMR"):
    preds = {e["desc_id"]: e["predictions"] for e in sub[task]}
    for thr in (0.5, 0.7):
      for k in (1, 5, 10, 100):
        hits = []
        for q, (v, span) in gt.items():
          right = [p for p in preds[q] if p[0] == v]
          candidates = right[:k] if task == "SVMR" else [p for p in preds[q][:k] if p[0] == v]
          hits.append(any(_iou((p[1], p[2]), span) >= np.float32(thr) for p in candidates))
        out[f"{task}/{thr}-r{k}"] = 100 * np.mean(hits)
  return out


def test_tl_metrics_match_an_independent_computation(trained_workdir):
  """TL (greedy moment in the ground-truth video) mIoU and R@1 from the retrieved spans, by hand."""
  config, data, model, params, _ = restore.restore(trained_workdir)
  ev = _evaluator(model, config, data)
  values = dict(ev.run(params))
  spans = ev.retrieve(params).greedy_gt
  ious = [_iou(spans[i], (float(ev.queries.st[i]), float(ev.queries.ed[i]))) for i in range(len(ev.queries))]
  assert values["TL/mIoU"] == pytest.approx(100 * np.mean(ious), abs=0.006)
  for thr in (0.3, 0.5, 0.7):
    assert values[f"TL/{thr}-r1"] == pytest.approx(100 * np.mean([x >= np.float32(thr) for x in ious]), abs=0.006)
  assert 0 < values["TL/mIoU"] < 100


def test_test_split_yields_predictions_only(trained_workdir):
  out = _run_eval(trained_workdir, "--split=test")
  assert out.returncode == 0, out.stderr[-3000:]
  _, _, _, _, step = restore.restore(trained_workdir)
  d = os.path.join(trained_workdir, "eval", f"test_public_step{step}")
  assert sorted(os.listdir(d)) == ["predictions.json"]
  sub = predictions.load_submission(os.path.join(d, "predictions.json"))
  assert "SVMR" not in sub and len(sub["VCMR"]) == len(sub["VR"]) > 0


def test_errors_say_what_to_run(trained_workdir, tmp_path):
  out = _run_eval(tmp_path)
  assert out.returncode != 0 and "hammer_jax.main" in out.stderr and out.stderr.strip().count("\n") == 0
  # A workdir with a config but no checkpoint.
  os.makedirs(tmp_path / "w")
  with open(tmp_path / "w" / "config.json", "w") as f:
    f.write(open(os.path.join(trained_workdir, "config.json")).read())
  with pytest.raises(restore.RestoreError, match="no checkpoint; train first"):
    restore.restore(str(tmp_path / "w"))
  # A checkpoint that does not fit the model the config describes.
  import shutil
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), tmp_path / "w" / "checkpoints")
  cfg = json.load(open(tmp_path / "w" / "config.json"))
  cfg["model"]["text_layers"] = 1
  json.dump(cfg, open(tmp_path / "w" / "config.json", "w"))
  with pytest.raises(restore.RestoreError, match="does not fit the model"):
    restore.restore(str(tmp_path / "w"))


def test_a_synthetic_workdir_without_its_corpus_is_not_rebuilt(trained_workdir, tmp_path):
  """Only the demo's own first run builds its corpus: evaluation says what is missing instead."""
  cfg = json.load(open(os.path.join(trained_workdir, "config.json")))
  cfg["data"]["prepared_dir"] = ""                                  # a demo-style workdir: data under W/data
  os.makedirs(tmp_path / "w")
  json.dump(cfg, open(tmp_path / "w" / "config.json", "w"))
  import shutil
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), tmp_path / "w" / "checkpoints")
  out = _run_eval(tmp_path / "w")
  assert out.returncode != 0 and "demo corpus of this workdir is missing" in out.stderr
  assert out.stderr.strip().count("\n") == 0 and not os.path.exists(tmp_path / "w" / "data")


def test_vr_without_negatives_is_a_config_error():
  from helpers import tiny_model_config
  from hammer_jax.model import build
  c = tiny_model_config()
  c.data.num_negatives = 0
  with pytest.raises(ValueError, match="num_negatives >= 1"):
    build.model_config(c, 12, 10)
  c.loss.use_vr = False
  assert not build.model_config(c, 12, 10).with_negatives


def eval_worker(out_path, workdir):
  """Worker: the same evaluation in a 2-process job; process 0 writes the files."""
  config, data, model, params, _ = restore.restore(workdir)
  ev = _evaluator(model, config, data)
  out_dir = os.path.dirname(out_path) + "/two_process_eval"
  list(ev.run(params, out_dir=out_dir))
  results = ev.last_results
  with open(out_path, "w") as f:
    json.dump({"results": results, "processes": jax.process_count()}, f)


def test_two_processes_give_the_same_metrics_and_predictions(trained_workdir, tmp_path):
  config, data, model, params, _ = restore.restore(trained_workdir)
  ev = _evaluator(model, config, data)
  list(ev.run(params, out_dir=str(tmp_path / "one_process_eval")))
  single = ev.last_results
  outs = run_processes("test_eval:eval_worker", tmp_path, workdir=trained_workdir)
  for o in outs:
    r = json.load(open(o))
    assert r["processes"] == 2
    want = json.loads(json.dumps(single))
    assert set(r["results"]) == set(want)
    for task, values in want.items():
      assert r["results"][task] == pytest.approx(values, nan_ok=True) if all(
          isinstance(v, float) for v in values.values()) else r["results"][task] == values, task
  a = json.load(open(tmp_path / "one_process_eval" / "predictions.json"))
  b = json.load(open(tmp_path / "two_process_eval" / "predictions.json"))
  assert a["video2idx"] == b["video2idx"]
  for task in ("VCMR", "SVMR", "VR"):
    assert [e["desc_id"] for e in a[task]] == [e["desc_id"] for e in b[task]]
    for x, y in zip(a[task], b[task]):
      np.testing.assert_allclose(np.array(x["predictions"]), np.array(y["predictions"]), rtol=1e-5, atol=1e-6)
