"""The corpus evaluator, big_vision style: `Evaluator(...).run(params)` yields `(name, value)`.

One evaluation of a split: encode its corpus, `retrieve.retrieve` every query,
build the TVR submission, score it, and (with `out_dir`) write

  predictions.json   TVR submission layout (VCMR / SVMR / VR, up to 100 each)
  metrics.json, .md  VR / SVMR / VCMR recalls, VR median rank, TL, per query type
  duration_buckets.*, timelines.png   Figures 2-3 and 5 (with `analyses`)

The metrics are computed from the submission's content (`metrics.py` follows
the TVR standalone evaluation), so handing `predictions.json` to the official
evaluation gives the same numbers. Training (periodically, on the first
`max_queries` queries, and at the end), the eval binary and the demo use it;
search shares the scorer and `retrieve` underneath it.

Yielded names are `<task>/<metric>` ("VR/r1", "VCMR/0.5-r10", "TL/mIoU",
"VR_by_type/v-r1", ...) with float values; `nested` turns them back into the
metrics dict. A split without ground truth (TVR test_public) writes
predictions.json and yields nothing.

Retrieval is `exhaustive` (the paper) or `two_stage` (a FAISS index of the
dual-encoder clip vectors, built from the encoded corpus, picks the candidates
HAMMER re-scores; `first_stage.py`). Two-stage evaluation can instead be handed
the index and parts store `python -m hammer_jax.index` saved (`saved=`): the
corpus is then not encoded, and the re-rank reads each query's K candidates
from the store (the eval binary does this when they are current). Whenever the model has the dual-encoder
head, the first stage's video recall@K is reported too ("first_stage/recall@K"):
it is the ceiling of everything two-stage retrieval does after it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import jax
import numpy as np

from hammer_jax import files
from hammer_jax.data import input_pipeline, prepared_data
from hammer_jax.retrieval import analysis, first_stage, metrics, predictions
from hammer_jax.retrieval.retrieve import Retrieval, retrieve
from hammer_jax.retrieval.scorer import PairScorer, local_params


def official_video_ids(data: prepared_data.PreparedData, split: str) -> tuple[dict[str, int], np.ndarray]:
  """(video2idx {vid_name: official idx}, official idx of each split position)."""
  names = data.split(split)["video_names"]
  video2idx = {str(k): int(v) for k, v in data.manifest["video2idx"][split].items()}
  return video2idx, np.array([video2idx[n] for n in names], np.int64)


def build_submission(result: Retrieval, queries: prepared_data.QueryTable, position_to_idx: np.ndarray,
                     video2idx: dict[str, int], with_ground_truth: bool) -> dict[str, Any]:
  """The TVR submission (`video2idx`, `VCMR`, `SVMR` when the ground truth is known, `VR`).

  Moments carry their probability exp(log score) in float64; the lists keep the
  log-score order (make_entry's stable sort keeps it where probabilities tie).
  """
  vcmr, svmr, vr = [], [], []
  for i, row in enumerate(result.query_rows):
    desc_id, desc = int(queries.desc_id[row]), queries.desc[row]
    m = result.vcmr[i]
    vcmr.append(predictions.make_entry(desc_id, desc, position_to_idx[m[:, 0].astype(np.int64)], m[:, 1], m[:, 2],
                                       np.exp(m[:, 3])))
    vr.append(predictions.make_vr_entry(desc_id, desc, position_to_idx[result.vr_rank_video[i]],
                                        result.vr_score[i]))
    if with_ground_truth:
      s = result.svmr[i]
      gt = position_to_idx[int(queries.video_index[row])]
      svmr.append(predictions.make_entry(desc_id, desc, np.full(len(s), gt), s[:, 0], s[:, 1], np.exp(s[:, 2])))
  return predictions.make_submission(video2idx, vcmr=vcmr, svmr=svmr if with_ground_truth else None, vr=vr)


def flatten(results: dict[str, Any]) -> Iterator[tuple[str, float]]:
  """{"VR": {"r1": 26.0}, ...} -> ("VR/r1", 26.0), ... (numeric leaves only)."""
  for task, values in results.items():
    for key, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield f"{task}/{key}", float(value)


def nested(pairs) -> dict[str, dict[str, float]]:
  """The inverse of `flatten`."""
  out: dict[str, dict[str, float]] = {}
  for name, value in pairs:
    task, key = name.split("/", 1)
    out.setdefault(task, {})[key] = value
  return out


def saved_two_stage(workdir: str, config, data, split: str, step: int, params):
  """(first-stage index, StoredCorpus) that `hammer_jax.index` built for this split and weights, or None (logged)."""
  from absl import logging
  from hammer_jax.retrieval import index_files, parts_store
  from hammer_jax.retrieval.first_stage import FirstStageIndex
  path = index_files.first_stage_path(workdir, data, split, step)
  store = index_files.parts_store_path(workdir, data, split, step)
  if not files.exists(path):
    return None
  meta = index_files.index_meta(config, data, split, step, local_params(params))
  try:
    index, stored = index_files.load_file(path, FirstStageIndex.load, "first-stage index",
                                          "rebuild it with python -m hammer_jax.index")
    index_files.check_meta(path, stored, meta)
    corpus = parts_store.open_store(store)
    index_files.check_meta(store, corpus.meta, meta)
    if (stored["fingerprint"], corpus.meta["fingerprint"]) != (meta["fingerprint"],) * 2:
      raise index_files.IndexMismatchError(f"{path}: built from something else")
  except (index_files.IndexMismatchError, index_files.UnreadableIndexError, parts_store.StoreError) as e:
    logging.warning("eval: not using the saved index (%s); encoding the corpus", e)
    return None
  logging.info("eval: two-stage from %s and its parts store (%d videos)", path, len(corpus))
  return index, corpus


class Evaluator:
  """Evaluates `split` of `data` with `scorer`.

  Args:
    scorer: the model's PairScorer (built once; reused by every run).
    config: the run's config (config.data for the pipeline, eval.batch_size).
    top_k: videos localised per query (VCMR list length).
    max_queries: evaluate only the first N queries (periodic evaluation).
    analyses: also write Figures 2-3 and 5.
    retrieval: "exhaustive" or "two_stage" (default: config.eval.retrieval).
    candidates: two-stage K (default: config.eval.first_stage_candidates).
    saved: two-stage only: (first-stage index, `parts_store.StoredCorpus`) of this
      split under the parameters evaluated, used instead of encoding the corpus.
  """

  RECALL_AT = (1, 5, 10, 20, 50, 100)

  def __init__(self, scorer: PairScorer, config, data: prepared_data.PreparedData, split: str, *, top_k: int,
               max_queries: int | None = None, analyses: bool = False, retrieval: str | None = None,
               candidates: int | None = None, saved: tuple[Any, Any] | None = None):
    from configs.base import ConfigError
    self.scorer, self.config, self.data, self.split = scorer, config, data, split
    self.top_k, self.analyses = top_k, analyses
    self.retrieval = retrieval or config.eval.retrieval
    self.candidates = int(candidates or config.eval.first_stage_candidates)
    self.has_first_stage = bool(scorer.model.config.dual_encoder_dim)
    if self.retrieval not in ("exhaustive", "two_stage"):
      raise ConfigError(f"eval.retrieval must be 'exhaustive' or 'two_stage', got {self.retrieval!r}")
    if self.retrieval == "two_stage" and not self.has_first_stage:
      raise ConfigError("two-stage retrieval needs the dual-encoder head, which this model was trained without "
                        "(loss.use_dual_encoder=False); train with the `two_stage` variant, or see "
                        "docs/two_stage.md to add the head to a trained checkpoint")
    if saved is not None and self.retrieval != "two_stage":
      raise ConfigError("a saved first-stage index and parts store serve two-stage evaluation only")
    self.saved = saved
    self.spec = input_pipeline.PipelineSpec.from_config(config.data)
    self.info = data.split(split)
    self.queries = prepared_data.read_queries(data, split)  # Once: periodic evaluations reuse them.
    n = len(self.queries)
    self.rows = np.arange(n if max_queries is None else min(max_queries, n))
    self.has_gt = bool(self.info["has_ground_truth"])
    video2idx, self.position_to_idx = official_video_ids(data, split)
    self.video2idx = video2idx
    wanted = set(self.queries.desc_id[self.rows].tolist())
    self.ground_truth = [r for r in metrics.ground_truth_records(self.queries) if r["desc_id"] in wanted]
    self.last_results: dict[str, Any] = {}

  def encode_corpus(self, params):
    """The split's video-only parts (every process encodes the whole corpus)."""
    return self.scorer.encode_videos(params, input_pipeline.eval_video_batches(
        self.data, self.split, self.spec, self.scorer.batch_size, process_index=0, process_count=1))

  def first_stage_index(self, params, corpus) -> first_stage.FirstStageIndex:
    """The corpus's clip vectors in a FAISS index (exact up to first_stage.FLAT_MAX_VECTORS vectors)."""
    vectors, mask = self.scorer.embed_corpus(params, corpus)
    return first_stage.FirstStageIndex.build(vectors, mask, kind=self.config.eval.first_stage_index)

  def retrieve(self, params) -> Retrieval:
    params = local_params(params)
    two_stage = self.retrieval == "two_stage"
    if self.saved is not None:
      index, corpus = self.saved
    else:
      corpus = self.encode_corpus(params)
      index = self.first_stage_index(params, corpus) if two_stage or (self.has_first_stage and self.has_gt) else None
    return retrieve(self.scorer, params, corpus, self.queries.token_ids, top_k=self.top_k,
                    max_query_len=self.spec.max_query_len, query_rows=self.rows,
                    ground_truth=self.queries.video_index if self.has_gt else None,
                    first_stage=index if two_stage else None, candidates=self.candidates,
                    recall_index=None if two_stage else index)  # exhaustive: the first stage's recall beside it

  def run(self, params, out_dir: str | None = None) -> Iterator[tuple[str, float]]:
    """Evaluates `params` ({"params": ...}); yields (name, value); writes files into `out_dir` (process 0)."""
    result = self.retrieve(params)
    submission, results = self.score(result)
    if out_dir and jax.process_index() == 0:
      predictions.write_submission(os.path.join(out_dir, "predictions.json"), submission, validated=True)
      if self.has_gt:
        files.atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(results, indent=1))
        files.atomic_write(os.path.join(out_dir, "metrics.md"), metrics.format_table(results) + "\n")
        if self.analyses:
          analysis.write_analyses(out_dir, result, self.queries, self.data, self.split)
    self.last_results = results  # The nested dict (with the per-type strings), for printing tables.
    yield from flatten(results)

  def score(self, result: Retrieval) -> tuple[dict[str, Any], dict[str, Any]]:
    """(submission, nested metrics) of a retrieval of this split's queries (metrics {} without ground truth)."""
    submission = build_submission(result, self.queries, self.position_to_idx, self.video2idx, self.has_gt)
    predictions.validate_submission(submission)
    results: dict[str, Any] = {}
    if self.has_gt:
      results = dict(metrics.evaluate_predictions(submission, self.ground_truth))
      gt_spans = np.stack([self.queries.st[self.rows], self.queries.ed[self.rows]], -1)
      results["TL"] = dict(metrics.tl_metrics(result.greedy_gt, gt_spans))
      if result.first_stage.shape[1]:
        results["first_stage"] = first_stage.recall_at(result.first_stage, self.queries.video_index[self.rows],
                                                       self.RECALL_AT)
    return submission, results
