"""Corpus evaluation (paper 3.5): video retrieval, then localisation in the top videos.

For a split with Q queries and V videos:
  1. each video's video-only part (`Hammer.encode_video`) is computed once;
  2. each query's query-only part (`Hammer.encode_query`) is computed once;
  3. every (query, video) pair gets its VR score f(v, h) (Eq. 9) from the pair
     part only (`score_pairs(retrieval_only=True)`), in blocks of queries x videos
     batched over the devices;
  4. in the top `top_k` videos of each query, start/end scores are decoded
     (greedy by default) and a moment scores p(v|h) * p_start * p_end (Eq. 2),
     p(v|h) the softmax of f over the corpus; SVMR decodes in the ground-truth
     video (its `top_k` best start <= end pairs).

Each JAX process evaluates its share of the queries on its own devices (a local
mesh; parameters are replicated, so no cross-host traffic is needed) and the
results are gathered at the end, so a multi-host slice evaluates a split as one
job. Used by the eval binary (`hammer_jax/eval.py`), by training (on a slice of
the split) and by search.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hammer_jax import decoding, hammer, input_pipeline, prepared_data


def local_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), ("data",))


def local_params(params):
  """This process's copy of replicated (possibly multi-host) parameters."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree_util.tree_map(one, params)


@dataclasses.dataclass
class Corpus:
  """Video-only parts of a split's corpus, on the host.

  parts: `encode_video` output with leading dim V; video_index, duration,
  frame_seconds: [V]; frame_mask: [V, F].
  """
  parts: dict[str, Any]
  video_index: np.ndarray
  duration: np.ndarray
  frame_seconds: np.ndarray
  frame_mask: np.ndarray

  def __len__(self) -> int:
    return len(self.video_index)

  def take(self, rows: np.ndarray) -> dict[str, Any]:
    return jax.tree_util.tree_map(lambda x: x[rows], self.parts)


class Evaluator:
  """Encodes a corpus once and scores/localises queries against it."""

  def __init__(self, model: hammer.Hammer, config, data: prepared_data.PreparedData, split: str, *,
               mesh: Mesh | None = None, progress: bool = True):
    self.model, self.config, self.data, self.split = model, config, data, split
    self.spec = input_pipeline.PipelineSpec.from_config(config.data)
    self.mesh = mesh or local_mesh()
    self.n_dev = self.mesh.devices.size
    self.batch = max(self.n_dev, config.eval.batch_size // self.n_dev * self.n_dev)
    self.progress = progress
    self.decoding = config.model.decoding
    sharded = NamedSharding(self.mesh, PartitionSpec("data"))
    rep = NamedSharding(self.mesh, PartitionSpec())
    self._sharded, self._rep = sharded, rep
    self._encode_video = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_video))
    self._encode_query = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_query))
    self._vr_block = jax.jit(self._vr_block_fn)
    self._localise = jax.jit(self._localise_fn, static_argnames=("k",))

  # -- jitted pieces -----------------------------------------------------------

  @functools.cached_property
  def queries(self) -> prepared_data.QueryTable:
    """The split's queries, read once (periodic evaluations reuse them)."""
    return prepared_data.read_queries(self.data, self.split)

  def _vr_block_fn(self, params, q_parts, v_parts):
    """f(v, h) for every pair of a block: q [qb, ...] x v [vb, ...] -> [qb, vb]."""
    qb = q_parts["query_mask"].shape[0]
    vb = v_parts["frame_mask"].shape[0]
    q = jax.tree_util.tree_map(lambda x: jnp.repeat(x, vb, axis=0), q_parts)
    v = jax.tree_util.tree_map(lambda x: jnp.tile(x, (qb,) + (1,) * (x.ndim - 1)), v_parts)
    out = self.model.apply(params, q, v, retrieval_only=True, method=hammer.Hammer.score_pairs)
    return out["vr_score"].reshape(qb, vb)

  def _localise_fn(self, params, q_parts, v_parts, k: int):
    """Per pair: greedy (or joint) moment and the top-k start <= end pairs, in frames."""
    out = self.model.apply(params, q_parts, v_parts, method=hammer.Hammer.score_pairs)
    mask = v_parts["frame_mask"]
    s, e, score = decoding.decode(out["start_log_scores"], out["end_log_scores"], mask, self.decoding)
    ks, ke, kscore = decoding.top_moments(out["start_log_scores"], out["end_log_scores"], mask, k)
    result = {"start": s, "end": e, "log_score": score, "top_start": ks, "top_end": ke, "top_log_score": kscore,
              "frame_log_probs": out["frame_log_probs"]}
    if "clip_log_probs" in out:
      result["clip_log_probs"] = out["clip_log_probs"]
    return result

  # -- encoding ----------------------------------------------------------------

  def _put(self, tree):
    return jax.device_put(tree, self._sharded)

  def encode_corpus(self, params) -> Corpus:
    """Every video of the split once (each process encodes the whole corpus)."""
    parts, index, duration, seconds, masks = [], [], [], [], []
    for b in input_pipeline.eval_video_batches(self.data, self.split, self.spec, self.batch,
                                               process_index=0, process_count=1):
      keep = b["example_mask"] > 0
      if not keep.any():
        continue
      p = self._encode_video(params, self._put(b["video"]), self._put(b["subtitle"]) if "subtitle" in b else None,
                             self._put(b["frame_mask"]))
      parts.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[keep], p))
      index.append(b["video_index"][keep])
      duration.append(b["duration"][keep])
      seconds.append(b["frame_seconds"][keep])
      masks.append(b["frame_mask"][keep])
    cat = lambda xs: np.concatenate(xs, axis=0)
    return Corpus(jax.tree_util.tree_map(lambda *xs: cat(xs), *parts), cat(index), cat(duration), cat(seconds),
                  cat(masks))

  def encode_queries(self, params, queries: prepared_data.QueryTable, rows: np.ndarray) -> dict[str, Any]:
    """Query-only parts of `queries[rows]` (leading dim len(rows)), on the host."""
    sub = dataclasses.replace(queries, token_ids=[queries.token_ids[r] for r in rows],
                              desc_id=queries.desc_id[rows])
    out = []
    for b in input_pipeline.eval_query_batches(sub, self.spec, self.batch, process_index=0, process_count=1):
      keep = b["example_mask"] > 0
      p = self._encode_query(params, self._put(b["query_ids"]), self._put(b["query_mask"]))
      out.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[keep], p))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *out)

  # -- scoring -----------------------------------------------------------------

  def vr_scores(self, params, q_parts: dict[str, Any], corpus: Corpus, video_block: int = 16) -> np.ndarray:
    """f(v, h) for every query x video: [Q, V] float32."""
    q = q_parts["query_mask"].shape[0]
    v = len(corpus)
    qb = self.n_dev * max(1, self.batch // (self.n_dev * video_block))
    out = np.zeros((q, v), np.float32)
    t0, done, total = time.time(), 0, q * v
    for i in range(0, q, qb):
      rows = np.arange(i, min(i + qb, q))
      pad = np.concatenate([rows, np.full(qb - len(rows), rows[-1])])
      qp = self._put(jax.tree_util.tree_map(lambda x: x[pad], q_parts))
      for j in range(0, v, video_block):
        cols = np.arange(j, min(j + video_block, v))
        vpad = np.concatenate([cols, np.full(video_block - len(cols), cols[-1])])
        vp = jax.device_put(corpus.take(vpad), self._rep)
        block = np.asarray(self._vr_block(params, qp, vp))
        out[rows[:, None], cols[None]] = block[:len(rows), :len(cols)]
        done += len(rows) * len(cols)
      self._report("VR pairs", done, total, t0)
    return out

  def localise(self, params, q_parts: dict[str, Any], corpus: Corpus, q_rows: np.ndarray,
               v_rows: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Decodes moments for pairs (q_parts[q_rows[i]], corpus[v_rows[i]]); returns frames, per pair."""
    n = len(q_rows)
    step = self.batch
    results = []
    t0 = time.time()
    for i in range(0, n, step):
      idx = np.arange(i, min(i + step, n))
      pad = np.concatenate([idx, np.full(step - len(idx), idx[-1])])
      qp = self._put(jax.tree_util.tree_map(lambda x: x[q_rows[pad]], q_parts))
      vp = self._put(corpus.take(v_rows[pad]))
      r = self._localise(params, qp, vp, k=k)
      results.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:len(idx)], r))
      self._report("localised pairs", min(i + step, n), n, t0)
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *results)

  def _report(self, what: str, done: int, total: int, t0: float) -> None:
    """A progress line with rate and ETA, at most every 2 s (and at the end)."""
    if not self.progress or jax.process_index() != 0:
      return
    now = time.time()
    if done < total and now - getattr(self, "_last_report", 0.0) < 2.0:
      return
    self._last_report = now
    rate = done / max(time.time() - t0, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    print(f"\r  {what}: {done}/{total}  {rate:.1f}/s  ETA {eta:.0f}s", end="" if done < total else "\n",
          file=sys.stderr, flush=True)
