"""PairScorer: the model's inference programs, jitted once, batched over a device mesh.

HAMMER is a cross-encoder (paper 3.3-3.5). Its forward is split so that each
side is computed once and only the pair part runs per (query, video):

  encode_videos:  video-only parts of every video -> a `Corpus`
  encode_queries: query-only parts of every query
  vr_scores:      f(v, h) (Eq. 9) of every (query, video) pair, in blocks
  localise:       start/end decoding (section 3.5) of chosen pairs

The scorer holds the model and a mesh, never a split's data: evaluation,
training's periodic evaluation and search feed it arrays from the input
pipeline. Every call dispatches all of its device programs before it waits for
the first result (JAX runs them asynchronously), so the host prepares the next
block while the devices compute. Pairs are formed by `hammer.gather_pairs`.

Each process scores on its own devices (a local mesh) with its own copy of the
replicated parameters (`local_params`), so evaluation needs no cross-host
traffic until the results are gathered (retrieve.py).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hammer_jax.model import hammer
from hammer_jax.retrieval import inference
from hammer_jax.retrieval.corpus import Corpus

VIDEO_BLOCK = 16  # Videos per block when blocks are sharded by query.


def local_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), ("data",))


def local_params(params):
  """This process's copy of replicated (possibly multi-host) parameters."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree_util.tree_map(one, params)


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """`rows` padded to `size` by repeating the last one (fixed shapes: one compilation)."""
  return np.concatenate([rows, np.full(size - len(rows), rows[-1])])


class PairScorer:
  """Encodes, scores and localises with `model` on `mesh` (default: this process's devices).

  Args:
    model: a `hammer.Hammer`.
    batch_size: rows per device program (queries, videos or pairs), rounded to
      a multiple of the mesh size; per-call `batch_size` arguments override it.
    decoding: "greedy" (section 3.5) or "joint" (config.model.decoding).
    progress: print progress lines (rate, ETA) to stderr on process 0.
  """

  def __init__(self, model: hammer.Hammer, *, batch_size: int = 64, decoding: str = "greedy",
               mesh: Mesh | None = None, progress: bool = False):
    self.model, self.decoding, self.progress = model, decoding, progress
    self.mesh = mesh or local_mesh()
    self.n_dev = self.mesh.devices.size
    self.batch_size = self.round_batch(batch_size)
    self._sharded = NamedSharding(self.mesh, PartitionSpec("data"))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._encode_video = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_video))
    self._encode_query = jax.jit(functools.partial(model.apply, method=hammer.Hammer.encode_query))
    self._vr_block = jax.jit(self._vr_block_fn)
    self._embed_query = jax.jit(functools.partial(model.apply, method=hammer.Hammer.embed_query))
    self._embed_clips = jax.jit(functools.partial(model.apply, method=hammer.Hammer.embed_clips))
    self._embed_videos = jax.jit(self._embed_videos_fn, static_argnames=("with_parts",))
    self._localise = jax.jit(self._localise_fn, static_argnames=("k",))
    self._last_report = 0.0

  def round_batch(self, n: int) -> int:
    return max(self.n_dev, n // self.n_dev * self.n_dev)

  # -- device programs -----------------------------------------------------------

  def _vr_block_fn(self, params, q_parts, v_parts):
    """f(v, h) of every pair of a block: q [qb, ...] x v [vb, ...] -> [qb, vb]."""
    qb, vb = q_parts["query_mask"].shape[0], v_parts["frame_mask"].shape[0]
    q, v = hammer.gather_pairs(q_parts, v_parts, jnp.repeat(jnp.arange(qb), vb), jnp.tile(jnp.arange(vb), qb))
    out = self.model.apply(params, q, v, retrieval_only=True, method=hammer.Hammer.score_pairs)
    return out["vr_score"].reshape(qb, vb)

  def _embed_videos_fn(self, params, video, subtitle, frame_mask, with_parts: bool = False):
    """Clip vectors [B, K, e] and clip mask [B, K] straight from features (+ the parts when asked)."""
    parts = self.model.apply(params, video, subtitle, frame_mask, method=hammer.Hammer.encode_video)
    vectors, mask = self.model.apply(params, parts, method=hammer.Hammer.embed_clips)
    return (vectors, mask, parts) if with_parts else (vectors, mask)

  def _localise_fn(self, params, q_parts, v_parts, k: int):
    """Per pair: the decoded moment, the k best start <= end pairs, the one-level moments (frames)."""
    out = self.model.apply(params, q_parts, v_parts, method=hammer.Hammer.score_pairs)
    mask = v_parts["frame_mask"]
    s, e, score = inference.decode(out["start_log_scores"], out["end_log_scores"], mask, self.decoding)
    ks, ke, kscore = inference.top_moments(out["start_log_scores"], out["end_log_scores"], mask, k)
    clip_len = v_parts["tokens"].shape[3] - 1
    (fs, fe), (cs, ce) = inference.level_spans(out["frame_log_probs"], out.get("clip_log_probs"), mask, clip_len)
    return {"vr_score": out["vr_score"], "start": s, "end": e, "log_score": score, "top_start": ks, "top_end": ke, "top_log_score": kscore,
            "frame_start": fs, "frame_end": fe, "clip_start": cs, "clip_end": ce}

  # -- encoding ------------------------------------------------------------------

  def encode_videos(self, params, video_batches: Iterable[dict[str, np.ndarray]]) -> Corpus:
    """Video-only parts of every real row of `video_batches` (input_pipeline.eval_video_batches)."""
    pending = []
    for b in video_batches:
      keep = b["example_mask"] > 0
      if keep.any():
        put = lambda x: jax.device_put(x, self._sharded)
        parts = self._encode_video(params, put(b["video"]), put(b["subtitle"]) if "subtitle" in b else None,
                                   put(b["frame_mask"]))
        pending.append((keep, parts, b))
    pieces = [Corpus(jax.tree_util.tree_map(lambda x, keep=keep: np.asarray(x)[keep], parts),
                     b["video_index"][keep], b["duration"][keep], b["frame_seconds"][keep])
              for keep, parts, b in pending]
    return Corpus.concatenate(pieces)

  def encode_queries(self, params, query_batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Query-only parts of every real row of `query_batches` (input_pipeline.eval_query_batches)."""
    pending = []
    for b in query_batches:
      put = lambda x: jax.device_put(x, self._sharded)
      pending.append((b["example_mask"] > 0, self._encode_query(params, put(b["query_ids"]), put(b["query_mask"]))))
    pieces = [jax.tree_util.tree_map(lambda x, keep=keep: np.asarray(x)[keep], p) for keep, p in pending]
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *pieces)

  # -- first-stage vectors (dual-encoder head) -----------------------------------

  def embed_queries(self, params, q_parts: dict[str, Any]) -> np.ndarray:
    """Query vectors [Q, e] from `encode_queries` output."""
    return self._map_rows(lambda p: self._embed_query(params, p), q_parts, q_parts["query_mask"].shape[0])

  def embed_corpus(self, params, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Clip vectors [V, K, e] and clip mask [V, K] of a corpus's cached parts."""
    return self._map_rows(lambda p: self._embed_clips(params, p), corpus.parts, len(corpus))

  def embed_video_batches(self, params, video_batches: Iterable[dict[str, np.ndarray]], *,
                          with_parts: bool = False):
    """Yields (batch, clip vectors [b, K, e], clip mask [b, K]) of the real rows of each batch.

    For building an index without holding the corpus's parts (index.py): with
    `with_parts`, each item also has the batch's `encode_video` parts (real rows,
    on the host) for the parts store. Batches are dispatched two ahead of the
    one being read.
    """
    put = lambda x: jax.device_put(x, self._sharded)
    pending = []
    for b in video_batches:
      out = self._embed_videos(params, put(b["video"]), put(b["subtitle"]) if "subtitle" in b else None,
                               put(b["frame_mask"]), with_parts=with_parts)
      pending.append((b, out))
      if len(pending) > 2:
        yield self._real_rows(*pending.pop(0))
    for item in pending:
      yield self._real_rows(*item)

  @staticmethod
  def _real_rows(b, out):
    keep = b["example_mask"] > 0
    rows = (b, np.asarray(out[0])[keep], np.asarray(out[1])[keep])
    return rows + ({k: np.asarray(v)[keep] for k, v in out[2].items()},) if len(out) > 2 else rows

  def video_parts_shapes(self, params, num_frames: int, video_dim: int,
                         subtitle_dim: int | None) -> dict[str, tuple[tuple[int, ...], str]]:
    """{part: (per-video shape, dtype name)} of `encode_video` (traced, nothing computed): the store's layout."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    sub = f32(1, num_frames, subtitle_dim) if subtitle_dim else None
    out = jax.eval_shape(self._encode_video, params, f32(1, num_frames, video_dim), sub,
                         jax.ShapeDtypeStruct((1, num_frames), jnp.int32))
    return {k: (tuple(int(x) for x in v.shape[1:]), np.dtype(v.dtype).name) for k, v in out.items()}

  def _map_rows(self, fn, tree, n: int):
    """fn over `tree`'s rows in blocks of `batch_size` (padded, dispatched together), rows [:n] kept."""
    step, pending = self.batch_size, []
    for i in range(0, n, step):
      idx = _pad_rows(np.arange(i, min(i + step, n)), step)
      pending.append((min(step, n - i), fn(jax.device_put(jax.tree_util.tree_map(lambda x: x[idx], tree),
                                                          self._sharded))))
    outs = [jax.tree_util.tree_map(lambda x, c=count: np.asarray(x)[:c], o) for count, o in pending]
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outs)

  # -- scoring -------------------------------------------------------------------

  def vr_scores(self, params, q_parts: dict[str, Any], corpus: Corpus, *, batch_size: int | None = None,
                video_block: int = VIDEO_BLOCK) -> np.ndarray:
    """f(v, h) for every query x video: [Q, V] float32.

    With several queries, at least one per device, blocks of queries are
    sharded over the devices against `video_block` videos at a time (about
    `batch_size` pairs per program); otherwise (search: one query) the videos
    are sharded and the queries replicated, so a single query is never padded
    to a block of queries.
    """
    q, v = q_parts["query_mask"].shape[0], len(corpus)
    pairs = batch_size or self.batch_size
    if q >= self.n_dev and q > 1:
      qb, vb = self.n_dev * max(1, pairs // (self.n_dev * video_block)), video_block
      q_sharding, v_sharding = self._sharded, self._replicated
    else:
      qb, vb = q, self.n_dev * -(-min(v, max(1, pairs // q)) // self.n_dev)
      q_sharding, v_sharding = self._replicated, self._sharded
    out = np.zeros((q, v), np.float32)
    t0, total = time.time(), q * v
    for i in range(0, q, qb):
      rows = np.arange(i, min(i + qb, q))
      qp = jax.device_put(jax.tree_util.tree_map(lambda x: x[_pad_rows(rows, qb)], q_parts), q_sharding)
      pending = []
      for j in range(0, v, vb):
        cols = np.arange(j, min(j + vb, v))
        vp = jax.device_put(corpus.take(_pad_rows(cols, vb)), v_sharding)
        pending.append((cols, self._vr_block(params, qp, vp)))
      for cols, block in pending:
        out[rows[:, None], cols[None]] = np.asarray(block)[:len(rows), :len(cols)]
      self._report("VR pairs", min(i + qb, q) * v, total, t0)
    return out

  def localise(self, params, q_parts: dict[str, Any], corpus: Corpus, q_rows: np.ndarray, v_rows: np.ndarray,
               k: int, *, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Decodes the pairs (query q_rows[i], corpus video v_rows[i]); per pair, in frames (see _localise_fn).

    Also returns each pair's f(v, h) ("vr_score", from the same pass): the
    second stage of two-stage retrieval scores and localises its candidates at once.
    """
    n, step = len(q_rows), self.round_batch(batch_size or self.batch_size)
    pending, t0 = [], time.time()
    for i in range(0, n, step):
      idx = _pad_rows(np.arange(i, min(i + step, n)), step)
      qp = jax.device_put(jax.tree_util.tree_map(lambda x: x[q_rows[idx]], q_parts), self._sharded)
      vp = jax.device_put(corpus.take(v_rows[idx]), self._sharded)
      pending.append((min(step, n - i), self._localise(params, qp, vp, k=k)))
    results = []
    for count, r in pending:
      results.append(jax.tree_util.tree_map(lambda x, count=count: np.asarray(x)[:count], r))
      self._report("localised pairs", sum(len(x["start"]) for x in results), n, t0)
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *results)

  def _report(self, what: str, done: int, total: int, t0: float) -> None:
    """A progress line with rate and ETA, at most every 2 s (and at the end)."""
    if not self.progress or jax.process_index() != 0:
      return
    now = time.time()
    if done < total and now - self._last_report < 2.0:
      return
    self._last_report = now
    rate = done / max(now - t0, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    print(f"\r  {what}: {done}/{total}  {rate:.1f}/s  ETA {eta:.0f}s", end="" if done < total else "\n",
          file=sys.stderr, flush=True)
