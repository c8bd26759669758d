"""A corpus of cached video-only parts: what retrieval scores queries against, and the search index.

Everything of `Hammer.encode_video` (the video branches of the frame encoder,
which do not depend on the query) is computed once per video and checkpoint; a
query then only pays for its own encoding and the (query, video) pair parts.
`Corpus.save` writes it whole or not at all (`files.atomic_write_with`) with a
metadata dict saying what it was computed from, and `Corpus.load` returns both,
so a saved corpus is the search index (search.py decides when it is stale).
It holds every video in memory (0.31 MB a video in float32 at the base
config's shapes): the exhaustive mode's cache. Two-stage retrieval reads its K candidates from a
`parts_store.StoredCorpus` instead, which has the interface retrieval uses
(`len`, `video_index`, `duration`, `frame_seconds`, `take`, `positions_of`).

Shapes (V videos, F frames, K clips of M frames, d hidden, n modalities):
  parts["tokens"]: [V, n, K, 1+M, d]; parts["frame_mask"]: [V, F];
  video_index (position in the prepared split), duration (s), frame_seconds: [V].
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from hammer_jax import files
from hammer_jax.retrieval import index_files


def positions_of(corpus_video_index: np.ndarray, video_index: np.ndarray) -> np.ndarray:
  """Positions in a corpus whose videos are `corpus_video_index` ([V]) of split positions `video_index` ([N]).

  -1 where a video is not in the corpus.
  """
  corpus_video_index, video_index = np.asarray(corpus_video_index), np.asarray(video_index)
  lookup = np.full(int(max(corpus_video_index.max(), np.max(video_index, initial=0))) + 1, -1, np.int64)
  lookup[corpus_video_index] = np.arange(len(corpus_video_index))
  return lookup[video_index]


@dataclasses.dataclass
class Corpus:
  """Video-only parts of V videos, on the host (numpy)."""
  parts: dict[str, np.ndarray]
  video_index: np.ndarray
  duration: np.ndarray
  frame_seconds: np.ndarray

  def __len__(self) -> int:
    return len(self.video_index)

  @property
  def frame_mask(self) -> np.ndarray:
    """[V, F] 1 on real frames."""
    return self.parts["frame_mask"]

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """`encode_video`-shaped parts of the videos at corpus positions `rows` ([N] -> leading dim N)."""
    return {k: v[rows] for k, v in self.parts.items()}

  def positions_of(self, video_index: np.ndarray) -> np.ndarray:
    """Corpus positions of split positions `video_index` ([N]; -1 where a video is not in the corpus)."""
    return positions_of(self.video_index, video_index)

  @classmethod
  def concatenate(cls, pieces: list["Corpus"]) -> "Corpus":
    cat = lambda xs: np.concatenate(xs, axis=0)
    return cls({k: cat([p.parts[k] for p in pieces]) for k in pieces[0].parts},
               cat([p.video_index for p in pieces]), cat([p.duration for p in pieces]),
               cat([p.frame_seconds for p in pieces]))

  def save(self, path: str, meta: dict[str, Any]) -> None:
    """One `.npz` (arrays + `meta` as JSON), written atomically."""
    arrays = {f"parts/{k}": np.asarray(v) for k, v in self.parts.items()}
    arrays.update(video_index=self.video_index, duration=self.duration, frame_seconds=self.frame_seconds,
                  meta=np.array(json.dumps(meta)))
    files.atomic_write_npz(path, arrays)

  @classmethod
  def load(cls, path: str) -> tuple["Corpus", dict[str, Any]]:
    """(corpus, meta) from `save`'s file; index_files.UnreadableIndexError (how to rebuild it) when unreadable."""
    def read(local: str):
      with np.load(local, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        parts = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("parts/")}
        return cls(parts, z["video_index"], z["duration"], z["frame_seconds"]), meta

    return index_files.load_file(path, lambda p: files.download(p, read), "search index (the corpus's cached parts)",
                                 "run python -m hammer_jax.search once without --require_index (or with "
                                 "--rebuild_index) to rebuild it")
