"""The first stage of two-stage retrieval: a FAISS index of the dual-encoder clip vectors.

HAMMER scores a (query, video) pair with a cross-encoder, one pass per pair, so
the exhaustive mode costs V passes per query. The dual-encoder head
(model/dual_encoder.py) gives one unit vector per query and per clip from the
query-only and video-only parts; a video's first-stage score is the max over
its clips of <query, clip>. Here those clip vectors go into a vector index and
a query's top N clips are grouped into its top videos, which HAMMER then
re-scores (retrieve.py).

Library: FAISS (`faiss-cpu` wheel): exact inner product (`IndexFlatIP`) and
compressed approximate indices (IVF-PQ) behind one API, an index serialises to
bytes (so it is saved whole, atomically, in one file, local or in a bucket),
and it has GPU builds for large corpora; the exact index is what the tests
compare the approximate path against. ScaNN would serve the approximate case as
well; FAISS covers both with one API.

Index kinds:
  "flat":  exact inner product (every clip vector, float32); up to
           FLAT_MAX_VECTORS vectors (1 GB at 256 wide);
  "ivfpq": inverted file over about sqrt(n) k-means lists (an HNSW graph
           over the list centres assigns vectors to lists fast) with 8-bit
           product quantisation of `pq_bytes` bytes per vector (~40 bytes a
           vector with its id), searched with `nprobe` lists; for large corpora;
  "auto":  "flat" up to FLAT_MAX_VECTORS vectors, else "ivfpq".

Ids: clip k of the video at corpus position p is id p * clips + k (clips =
clips per video), so a hit names its video without a lookup table.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hammer_jax import files

FLAT_MAX_VECTORS = 1_000_000
KINDS = ("auto", "flat", "ivfpq")


def _faiss():
  try:
    import faiss
  except ImportError:  # pragma: no cover - faiss-cpu is a dependency
    raise ImportError("two-stage retrieval needs FAISS: pip install faiss-cpu") from None
  return faiss


def choose_kind(num_vectors: int, kind: str = "auto") -> str:
  if kind not in KINDS:
    raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
  if kind != "auto":
    return kind
  return "flat" if num_vectors <= FLAT_MAX_VECTORS else "ivfpq"


def ivf_lists(num_vectors: int) -> int:
  """Inverted lists for `num_vectors`: about sqrt(n), a power of two (the low end of FAISS's guideline,
  so the k-means training stays minutes on a few cores at millions of vectors)."""
  return int(2 ** np.clip(np.round(np.log2(np.sqrt(max(num_vectors, 1)))), 4, 16))


class FirstStageIndex:
  """Clip vectors of a corpus in a FAISS index; `search` returns each query's top videos.

  Attributes:
    index: the FAISS index (inner product; ids as in the module docstring).
    clips: clips per video (K of the model's clip level; 1 in FLAT).
    num_videos: corpus size V (positions 0..V-1 in corpus order).
    kind: "flat" or "ivfpq".
  """

  def __init__(self, index, clips: int, num_videos: int, kind: str):
    self.index, self.clips, self.num_videos, self.kind = index, int(clips), int(num_videos), kind

  @classmethod
  def build(cls, clip_vectors: np.ndarray, clip_mask: np.ndarray, *, kind: str = "auto", pq_bytes: int = 32,
            nprobe: int = 32, train_size: int = 131_072, seed: int = 0) -> "FirstStageIndex":
    """Index of the real clips: clip_vectors [V, K, e] (unit rows), clip_mask [V, K]."""
    _, k, e = clip_vectors.shape
    real = np.asarray(clip_mask) > 0
    kind = choose_kind(int(real.sum()), kind)
    out = cls(cls.empty(e, kind, int(real.sum()), pq_bytes=pq_bytes, nprobe=nprobe), k, 0, kind)
    if kind == "ivfpq":
      vectors = np.asarray(clip_vectors, np.float32)[real]
      rng = np.random.default_rng(seed)
      out.train(vectors[rng.choice(len(vectors), min(train_size, len(vectors)), replace=False)])
    out.add(clip_vectors, clip_mask)
    return out

  def train(self, sample: np.ndarray) -> None:
    """Trains an approximate index's lists and codebooks on sample vectors [n, e]."""
    self.index.train(np.ascontiguousarray(sample, np.float32))

  def add(self, clip_vectors: np.ndarray, clip_mask: np.ndarray) -> None:
    """Appends videos (corpus positions num_videos, num_videos + 1, ...): [n, K, e], [n, K]."""
    n, k, _ = clip_vectors.shape
    if k != self.clips:
      raise ValueError(f"videos have {k} clips, the index {self.clips}")
    keep = np.asarray(clip_mask) > 0
    ids = ((self.num_videos + np.arange(n))[:, None] * k + np.arange(k)[None]).astype(np.int64)[keep]
    self.index.add_with_ids(np.ascontiguousarray(np.asarray(clip_vectors, np.float32)[keep]), ids)
    self.num_videos += n

  @staticmethod
  def empty(dim: int, kind: str, num_vectors: int, *, pq_bytes: int = 32, nprobe: int = 32):
    """An untrained FAISS index of `kind` for about `num_vectors` vectors of width `dim`."""
    faiss = _faiss()
    if kind == "flat":
      return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if dim % pq_bytes:
      raise ValueError(f"ivfpq: vector width {dim} must be a multiple of pq_bytes {pq_bytes}")
    index = faiss.index_factory(dim, f"IVF{ivf_lists(num_vectors)}_HNSW32,PQ{pq_bytes}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    ivf.cp.niter = 10  # k-means iterations: list quality saturates well before FAISS's default 25
    return index

  def search(self, query_vectors: np.ndarray, num_videos: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top `num_videos` videos by max clip score.

    query_vectors: [Q, e]. Returns (positions int64 [Q, n], scores float32 [Q, n]),
    n = min(num_videos, V), best first; -1 / -inf pad rows only where the index
    cannot return n distinct videos (an approximate index whose probed lists
    hold fewer).
    """
    n = min(int(num_videos), self.num_videos)
    queries = np.ascontiguousarray(query_vectors, np.float32)
    want = min(self.index.ntotal, n * self.clips)
    while True:
      scores, ids = self.index.search(queries, want)
      positions, best = self._group(scores, ids, n)
      # An approximate index (or many near-duplicate clips) can fill `want` hits
      # with fewer than n videos: ask for more hits until it cannot give more.
      if (positions >= 0).sum(1).min() >= n or want >= self.index.ntotal:
        return positions, best
      want = min(self.index.ntotal, want * 4)

  def _group(self, scores, ids, n):
    positions = np.full((len(ids), n), -1, np.int64)
    best = np.full((len(ids), n), -np.inf, np.float32)
    for q in range(len(ids)):
      valid = ids[q] >= 0
      videos = ids[q][valid] // self.clips
      # Hits come best first: a video's first hit is its max over clips.
      _, first = np.unique(videos, return_index=True)
      first = np.sort(first)[:n]
      positions[q, :len(first)] = videos[first]
      best[q, :len(first)] = scores[q][valid][first]
    return positions, best

  # -- files ------------------------------------------------------------------

  def save(self, path: str, meta: dict[str, Any]) -> None:
    """One `.npz` (the serialised index + what it was built from), written whole or not at all."""
    faiss = _faiss()
    arrays = dict(index=faiss.serialize_index(self.index),
                  info=np.array(json.dumps(dict(meta, clips=self.clips, num_videos=self.num_videos, kind=self.kind))))
    files.atomic_write_npz(path, arrays)

  @classmethod
  def load(cls, path: str) -> tuple["FirstStageIndex", dict[str, Any]]:
    """(index, meta) from `save`'s file; OSError / ValueError / KeyError when unreadable."""
    faiss = _faiss()

    def read(local: str):
      with np.load(local, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        index = faiss.deserialize_index(z["index"])
      return cls(index, info["clips"], info["num_videos"], info["kind"]), info

    return files.download(path, read)

  def nbytes(self) -> int:
    """Size of the serialised index (what it holds in memory, about)."""
    return int(_faiss().serialize_index(self.index).nbytes)


def recall_at(first_stage_positions: np.ndarray, ground_truth: np.ndarray, ks) -> dict[str, float]:
  """Video recall@k of the first stage, in percent: {"recall@k": ...} for each k.

  first_stage_positions: [Q, n] corpus positions, best first (-1 padded);
  ground_truth: [Q] corpus position of each query's video.
  """
  hit_rank = np.full(len(ground_truth), np.inf)
  match = first_stage_positions == np.asarray(ground_truth)[:, None]
  found = match.any(axis=1)
  hit_rank[found] = match.argmax(axis=1)[found] + 1
  return {f"recall@{k}": round(100.0 * float(np.mean(hit_rank <= k)), 2) for k in ks}
