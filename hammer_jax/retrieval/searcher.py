"""Moment search over a corpus: a trained model, a saved corpus index, one query at a time.

`CorpusSearcher(...).search(text)` (`hammer_jax.search.MomentSearcher(W)` for a
workdir) tokenises the text like the prepared queries and runs the one retrieval
path (`retrieve.retrieve`, the same as evaluation) for that single query against
the index: a moment scores
p(v|h) * p_start * p_end (Eq. 2) over the whole corpus, one moment per video in
the top_k videos.

When `python -m hammer_jax.index` has built a first-stage index for the same
corpus and checkpoint (`W/index/`), search is two-stage: the index's top K
videos are re-scored instead of every video, their video-only parts read from
the parts store beside the index (`parts_store.StoredCorpus`: K videos a query,
the corpus is never held in memory). A stale first-stage index or store is
refused in one line (index_files.py). Exhaustive search, and two-stage search
over an index built without a store (`--store=false`, or by an older version;
a notice says so), use the parts cache: every video's parts (`Corpus`) in
memory, computed once per (corpus, split, checkpoint) and saved as
`W/search_index/<corpus-id>_step<N>.npz` (+ `.json`, human-readable); a stale
one is rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np

from hammer_jax import files
from hammer_jax.errors import HammerError
from hammer_jax.retrieval import index_files, parts_store
from hammer_jax.retrieval.corpus import Corpus
from hammer_jax.retrieval.first_stage import FirstStageIndex

VR_PAIRS_PER_CALL = 256  # One query against this many videos per device program.


class SearchError(HammerError, ValueError):
  """Bad query, corpus or index (one line)."""


@dataclasses.dataclass
class Moment:
  """One result: seconds within video `vid_name`, score = p(v|h) * p_start * p_end."""
  rank: int
  vid_name: str
  st: float
  ed: float
  score: float
  video_position: int                     # row of the video in its split (`video_index`)
  subtitles: list[dict[str, Any]] | None = None

  def to_json(self) -> dict[str, Any]:
    out = {"rank": self.rank, "vid_name": self.vid_name, "st": round(self.st, 3), "ed": round(self.ed, 3),
           "score": self.score}
    if self.subtitles is not None:
      out["subtitles"] = self.subtitles
    return out


def read_subtitles(path: str) -> dict[str, list[dict[str, Any]]]:
  """TVR's `tvqa_preprocessed_subtitles.jsonl`: {vid_name: [{"start", "end", "text"}, ...]} (seconds)."""
  out: dict[str, list[dict[str, Any]]] = {}
  try:
    text = files.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise SearchError(f"{path}: cannot read subtitles ({getattr(e, 'strerror', None) or e})") from None
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      out[str(rec["vid_name"])] = [{"start": float(s["start"]), "end": float(s["end"]), "text": str(s["text"])}
                                   for s in rec["sub"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      raise SearchError(f"{path}: line {n}: not a subtitle record {{vid_name, sub: [{{start, end, text}}]}} "
                        f"({e.__class__.__name__}: {e})") from None
  return out


class CorpusSearcher:
  """A trained model + the indices of one corpus; `search(text)` answers queries without reloading.

  Handed what a restore gives (`hammer_jax.restore`; `hammer_jax.search.MomentSearcher`
  restores a workdir and builds one): config, model_data (the data the model
  was trained on), model, params ({"params": ...}), step, and the tokenizer of
  that data. `workdir` is where the indices live (`index_files.py`).
  retrieval: "auto" (two-stage when `hammer_jax.index` has built a first-stage
  index for this corpus and checkpoint, else exhaustive), "exhaustive" or
  "two_stage" (an error without a current index); candidates: two-stage K
  (default config.eval.first_stage_candidates). `corpus` is what the re-rank
  reads: the index's parts store (index_status "store") in two-stage mode when
  it has one, else the parts cache ("loaded" or "built"; rebuild_index and
  require_index concern the parts cache).
  """

  def __init__(self, workdir: str, *, config, model_data, model, params, step: int, tokenizer,
               prepared_dir: str | None = None, split: str | None = None, subtitles: str | None = None,
               rebuild_index: bool = False, require_index: bool = False, retrieval: str = "auto",
               candidates: int | None = None):
    from hammer_jax.retrieval.scorer import PairScorer

    self.workdir = workdir
    self.config, self.model_data, self.model, self.params, self.step = config, model_data, model, params, step
    data, split = index_files.open_corpus(self.config, self.model_data, prepared_dir, split)
    self.data, self.split = data, split
    info = data.split(split)  # Unknown split: one-line PreparedDataError listing the prepared ones.
    if not info["num_videos"]:
      raise SearchError(f"{data.path}: split '{split}' has no videos")
    self.tokenizer = tokenizer
    self.subtitles = None
    # A corpus prepared with its subtitle lines (data_prep.corpus --subtitles) shows them unless told otherwise.
    if not subtitles and data.manifest.get("subtitle_lines"):
      subtitles = files.join(data.path, data.manifest["subtitle_lines"])
    if subtitles:
      if data.source not in ("tvr", "corpus"):
        raise SearchError(f"--subtitles: {data.path} is a {data.source} corpus; subtitle lines are read for "
                          "TVR-layout corpora and data_prep.corpus corpora only")
      self.subtitles = read_subtitles(subtitles)
    # One query: programs of one row per device (localisation) and of VR_PAIRS_PER_CALL pairs (VR).
    self.scorer = PairScorer(self.model, batch_size=1, decoding=self.config.model.decoding)
    meta = self._index_meta()  # Hashes every parameter: once, for both indices.
    # The first stage first: a refused one is known before a parts cache is built for nothing.
    self.first_stage, self.retrieval = self._load_first_stage(meta, retrieval)
    self.corpus = self._open_store(meta) if self.retrieval == "two_stage" else None
    self.index_status = "store"
    if self.corpus is None:
      self.corpus, self.index_status = self._load_or_build_index(meta, rebuild_index, require_index)
    self.candidates = int(candidates or self.config.eval.first_stage_candidates)
    self.video_names = [info["video_names"][i] for i in self.corpus.video_index]
    self.last_notices: list[str] = []  # of the latest search: see `notices`

  # -- tokens ------------------------------------------------------------------

  def tokenize(self, text: str) -> np.ndarray:
    """int32 [n]: [CLS] ... [SEP], the whole query (retrieve cuts it like prepared queries).

    A query that the vocabulary cannot represent (nothing but [UNK]: emoji, most
    scripts an uncased English WordPiece vocabulary lacks) is refused.
    """
    if not text or not text.strip():
      raise SearchError("empty query")
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:  # Bytes that were not UTF-8, kept by Python as lone surrogates (argv, stdin)
      code = ord(text[e.start])
      what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
      raise SearchError(f"query {text!r}: not UTF-8 text ({what} at character {e.start + 1}); give the query in "
                        "UTF-8") from None
    ids = self.tokenizer(text.strip(), add_special_tokens=True)["input_ids"]
    words = ids[1:-1]
    if not words or all(i == self.tokenizer.unk_token_id for i in words):
      lower = getattr(self.tokenizer, "do_lower_case", None)
      raise SearchError(f"query {text!r}: the model's vocabulary ({len(self.tokenizer)} "
                        f"{'uncased ' if lower else ''}WordPiece tokens of "
                        f"{self.model_data.manifest.get('text_checkpoint', 'its text checkpoint')}) has no token for "
                        "any of it (all [UNK]); it covers English words and punctuation, not emoji or most other "
                        "scripts")
    return np.asarray(ids, np.int32)

  def notices(self, token_ids: np.ndarray, top_k: int) -> list[str]:
    """What the search does differently from what was asked (one line each)."""
    out = []
    limit = int(self.config.data.max_query_len)
    if len(token_ids) > limit:
      out.append(f"the query has {len(token_ids) - 2} tokens; the model reads the first {limit - 2} (max_query_len "
                 f"{limit} with [CLS] and [SEP])")
    if top_k > len(self.corpus):
      out.append(f"top_k {top_k} is more than the corpus's {len(self.corpus)} videos: returning {len(self.corpus)}")
    elif self.retrieval == "two_stage" and top_k > self.candidates:
      out.append(f"two-stage search re-scores the first stage's {self.candidates} candidates: returning "
                 f"{self.candidates} moments (raise --candidates for more)")
    return out

  # -- index -------------------------------------------------------------------

  def index_path(self) -> str:
    """The parts cache: `W/search_index/<corpus-id>_step<N>.npz` (index_files.py)."""
    return index_files.parts_cache_path(self.workdir, self.data, self.split, self.step)

  def _index_meta(self) -> dict[str, Any]:
    """What the indices are computed from; any change (data rebuilt, other weights, shapes) invalidates them."""
    return index_files.index_meta(self.config, self.data, self.split, self.step, self.params)

  def _load_first_stage(self, meta: dict[str, Any], retrieval: str):
    """The first-stage index when two-stage applies: (index or None, "two_stage" | "exhaustive")."""
    path = index_files.first_stage_path(self.workdir, self.data, self.split, self.step)
    if retrieval == "exhaustive" or (retrieval == "auto" and not files.exists(path)):
      return None, "exhaustive"
    if not self.model.config.dual_encoder_dim:
      raise SearchError("two-stage search needs the dual-encoder head, which this model was trained without "
                        "(loss.use_dual_encoder=False)")
    if not files.exists(path):
      raise SearchError(f"{path}: no first-stage index; build it with python -m hammer_jax.index "
                        f"--workdir={self.workdir}")
    index, stored = index_files.load_file(
        path, FirstStageIndex.load, "first-stage index",
        f"rebuild it with python -m hammer_jax.index --workdir={self.workdir} (same corpus flags), or search with "
        "--retrieval=exhaustive")
    try:
      index_files.check_meta(path, stored, meta)
    except index_files.IndexMismatchError as e:
      raise SearchError(str(e)) from None
    return index, "two_stage"

  def _open_store(self, meta: dict[str, Any]) -> parts_store.StoredCorpus | None:
    """The parts store beside the first-stage index, or None (logged) when there is none to use."""
    from absl import logging
    path = index_files.parts_store_path(self.workdir, self.data, self.split, self.step)
    stamp = parts_store.read_stamp(path)
    if stamp is None:
      why = ("has no store.json: its build did not finish" if files.exists(path) else
             "is missing: the index was built with --store=false or by an older version")
      logging.warning("index: the parts store %s %s; the re-rank holds the corpus's parts in memory instead "
                      "(python -m hammer_jax.index --workdir=%s builds the store)", path, why, self.workdir)
      return None
    try:
      index_files.check_meta(path, stamp, meta)
      if stamp.get("fingerprint") != meta["fingerprint"]:  # anything else check_meta does not name
        raise index_files.IndexMismatchError(f"{path}: built from something else (fingerprint); rebuild it with "
                                             "python -m hammer_jax.index")
      corpus = parts_store.open_store(path)
    except (index_files.IndexMismatchError, index_files.UnreadableIndexError, parts_store.StoreError) as e:
      raise SearchError(f"{e} (--workdir={self.workdir}, same corpus flags), or search with "
                        "--retrieval=exhaustive") from None
    logging.info("index: two-stage re-rank reads %s (%d videos, %.1f kB a video)", path, len(corpus),
                 corpus.layout.bytes_per_video() / 1e3)
    return corpus

  def _load_or_build_index(self, meta: dict[str, Any], rebuild: bool, require: bool) -> tuple[Corpus, str]:
    from absl import logging
    from hammer_jax.data import input_pipeline
    path = self.index_path()
    why = "not built yet"
    if rebuild:
      why = "--rebuild_index"
    elif files.exists(path):
      try:
        corpus, stored = Corpus.load(path)
        if stored.get("fingerprint") == meta["fingerprint"]:
          logging.info("index: loaded %s (%d videos)", path, len(corpus))
          return corpus, "loaded"
        why = "stale (corpus or checkpoint changed)"
      except index_files.UnreadableIndexError as e:  # e.g. a file truncated by a full disk: a cache, rebuilt
        why = f"unreadable ({e.cause})"
    if require and not rebuild:
      raise SearchError(f"{path}: no usable search index ({why}) and --require_index is set; run once without "
                        "--require_index to build it")
    t0 = time.time()
    spec = input_pipeline.PipelineSpec.from_config(self.config.data)
    corpus = self.scorer.encode_videos(self.params, input_pipeline.eval_video_batches(
        self.data, self.split, spec, self.scorer.round_batch(self.config.eval.batch_size),
        process_index=0, process_count=1))
    seconds = time.time() - t0
    corpus.save(path, meta)
    files.atomic_write(path[:-len(".npz")] + ".json", json.dumps(
        dict(meta, build_seconds=round(seconds, 3), bytes=files.size(path)), indent=1))
    logging.info("index: built %s (%d videos, %.1f MB; reason: %s) in %.2f s", path, len(corpus),
                 files.size(path) / 1e6, why, seconds)
    return corpus, "built"

  # -- search ------------------------------------------------------------------

  def search(self, text: str, top_k: int = 10) -> list[Moment]:
    """The top_k moments (one per video, in the top_k videos by VR), best score first."""
    from hammer_jax.retrieval.retrieve import retrieve
    if top_k < 1:
      raise SearchError(f"top_k must be at least 1, got {top_k}")
    ids = self.tokenize(text)
    self.last_notices = self.notices(ids, top_k)
    result = retrieve(self.scorer, self.params, self.corpus, [ids], top_k=top_k,
                      max_query_len=int(self.config.data.max_query_len), local=True,
                      vr_pairs_per_call=VR_PAIRS_PER_CALL, first_stage=self.first_stage,
                      candidates=self.candidates)
    positions = self.corpus.positions_of(result.vcmr[0, :, 0].astype(np.int64))
    moments = []
    for rank, ((_, st, ed, log_score), pos) in enumerate(zip(result.vcmr[0], positions), 1):
      name = self.video_names[pos]
      subs = None
      if self.subtitles is not None:  # Lines overlapping [st, ed].
        subs = [s for s in self.subtitles.get(name, []) if s["start"] < ed and s["end"] > st]
      moments.append(Moment(rank, name, float(st), float(ed), float(np.exp(log_score)),
                            int(self.corpus.video_index[pos]), subs))
    return moments
