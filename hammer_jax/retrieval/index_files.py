"""Where a workdir keeps the indices of a corpus, and what says they are current.

Per (corpus, split, checkpoint step), under the workdir:

  W/search_index/<corpus-id>_step<N>.npz  the corpus's cached video-only parts
                                          (`Corpus`), all in memory: the re-rank of
                                          exhaustive search (and of two-stage search
                                          without a store);
  W/index/<corpus-id>_step<N>.npz         the first-stage FAISS index
                                          (`first_stage.FirstStageIndex`), built by
                                          `python -m hammer_jax.index`;
  W/index/<corpus-id>_step<N>.store/      beside it, by the same build: every video's
                                          parts, read K videos a query by the
                                          two-stage re-rank (`parts_store.py`).

corpus-id = the prepared folder's name, the split and a hash of the folder's
path. Each one's metadata (`index_meta`) fingerprints what it was computed
from (the prepared data's build arguments and videos, the pipeline shapes, the
vocabulary and the full bytes of every parameter), so a retrained checkpoint or
re-prepared data is detected: search rebuilds the parts cache and refuses a
stale first-stage index or store with one line naming what changed
(`check_meta`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import Any, Callable

import numpy as np

from hammer_jax import files
from hammer_jax.errors import HammerError


class IndexMismatchError(HammerError, ValueError):
  """A saved index was built from something else than what it is used with (one line)."""


class UnreadableIndexError(HammerError, ValueError):
  """A saved index file that cannot be read back (truncated by a full disk, damaged); says how to rebuild it."""

  def __init__(self, path: str, what: str, cause: str, fix: str):
    self.cause = cause
    super().__init__(f"{path}: unreadable {what} ({cause}); {fix}")


# What reading a damaged .npz raises: a truncated zip (BadZipFile, EOFError), a bad
# member (ValueError, KeyError), FAISS refusing its serialised index (RuntimeError).
_DAMAGED = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile)


def load_file(path: str, load: Callable[[str], Any], what: str, fix: str) -> Any:
  """`load(path)`, with a damaged file made one UnreadableIndexError line: `path: unreadable <what> (...); <fix>`."""
  try:
    return load(path)
  except _DAMAGED as e:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise UnreadableIndexError(path, what, f"{e.__class__.__name__}: {first}", fix) from None


def open_corpus(config, model_data, prepared_dir: str | None, split: str | None):
  """(data, split) of the corpus that search and `hammer_jax.index` work on, the same rule for both.

  The workdir's data, or a folder the user prepared (it must share the model
  data's vocabulary and feature widths); the split defaults to the config's eval
  split, or to the only split of a user corpus that lacks it.
  """
  from hammer_jax.data import prepared_data
  data = model_data if prepared_dir is None else prepared_data.open_prepared(prepared_dir)
  # The model's token-id space is the one its training data was tokenised with.
  data.check_vocabulary(model_data.manifest["vocab_sha256"], model_data.manifest.get("text_checkpoint", ""))
  data.check_feature_dims(model_data.video_dim, model_data.subtitle_dim, model=f"the model trained on {model_data.path}")
  if split is None:
    split = config.data.eval_split
    if prepared_dir is not None and split not in data.manifest["splits"] and len(data.manifest["splits"]) == 1:
      split = next(iter(data.manifest["splits"]))  # A user corpus usually holds one split.
  return data, split


def params_fingerprint(params) -> str:
  """sha256 over every parameter's shape, dtype and bytes (any retraining changes it)."""
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def corpus_id(data, split: str) -> str:
  base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(data.path.rstrip("/")))
  digest = hashlib.sha256(data.path.encode()).hexdigest()[:10]
  return f"{base}-{split}-{digest}"


def parts_cache_path(workdir: str, data, split: str, step: int) -> str:
  return files.join(workdir, "search_index", f"{corpus_id(data, split)}_step{step}.npz")


def first_stage_path(workdir: str, data, split: str, step: int) -> str:
  return files.join(workdir, "index", f"{corpus_id(data, split)}_step{step}.npz")


def parts_store_path(workdir: str, data, split: str, step: int) -> str:
  """The parts store beside the first-stage index (`parts_store.py`)."""
  return files.join(workdir, "index", f"{corpus_id(data, split)}_step{step}.store")


def index_meta(config, data, split: str, step: int, params) -> dict[str, Any]:
  """What an index of `split` of `data` under these parameters is computed from."""
  m, info, d = data.manifest, data.split(split), config.data
  source = {"build_args": m.get("build_args"),  # input files with their sizes and mtimes
            "num_videos": info["num_videos"], "num_frames": info["num_frames"],
            "video_names": info["video_names"], "spec": [d.max_frames, d.clip_len, bool(d.use_subtitles)]}
  corpus = hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()
  weights = params_fingerprint(params)
  return {"corpus_path": data.path, "split": split, "step": step, "vocab_sha256": m["vocab_sha256"],
          "video_dim": data.video_dim, "subtitle_dim": data.subtitle_dim, "num_videos": info["num_videos"],
          "corpus_fingerprint": corpus, "params_fingerprint": weights,
          "fingerprint": hashlib.sha256((corpus + weights).encode()).hexdigest()}


def check_meta(path: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
  """One-line IndexMismatchError naming the first thing that differs."""
  checks = (("vocab_sha256", "vocabulary"), ("step", "checkpoint step"), ("params_fingerprint", "checkpoint weights"),
            ("corpus_fingerprint", "prepared corpus"))
  for key, what in checks:
    if stored.get(key) != current.get(key):
      raise IndexMismatchError(
          f"{path}: built for another {what} ({key} {str(stored.get(key))[:16]} != {str(current.get(key))[:16]}); "
          "rebuild it with python -m hammer_jax.index")
