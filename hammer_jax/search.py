r"""Moment search: the best moments of a video corpus for a typed query.

  python -m hammer_jax.search --workdir=W --query "the man opens the door" [--top_k=10]
      [--split=S | --prepared_dir=DIR [--split=S]] [--subtitles=tvqa_preprocessed_subtitles.jsonl]
      [--json] [--interactive] [--step=N] [--rebuild_index] [--require_index]

The corpus is a split of the workdir's prepared data (default: the config's
eval split) or of a folder the user prepared with `python -m data_prep.tvr`
(`--prepared_dir`; same feature widths and vocabulary as the model's data). A
moment scores p(v|h) * p_start * p_end as in evaluation (`retrieval.retrieve`):
the query's VR score f(v, h) against every video, softmaxed over the corpus, then
greedy (or the config's) decoding in each of the top_k videos.

The video-only parts (`Evaluator.encode_corpus`: all that does not depend on the
query) are the *index*: built once per (corpus, split, checkpoint step) and saved as
`W/search_index/<corpus-id>_step<N>.npz` (+ `.json`, human-readable), then loaded
by later runs. A query costs one query encoding + V pair scores + top_k decodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from typing import Any

import numpy as np

VR_CHUNK = 256  # Videos per jitted VR call: few dispatches per query, bounded activation memory.


class SearchError(ValueError):
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
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
          out[str(rec["vid_name"])] = [{"start": float(s["start"]), "end": float(s["end"]), "text": str(s["text"])}
                                       for s in rec["sub"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
          raise SearchError(f"{path}: line {n}: not a subtitle record {{vid_name, sub: [{{start, end, text}}]}} "
                            f"({e.__class__.__name__}: {e})") from None
  except OSError as e:
    raise SearchError(f"{path}: cannot read subtitles ({e.strerror or e})") from None
  return out


class MomentSearcher:
  """A restored model + the index of one corpus; `search(text)` answers queries without reloading.

  Shapes: V videos, F = config.data.max_frames; the index is an `evaluator.Corpus`
  (parts["tokens"]: [V, n_modalities, K, 1+M, d], frame_mask [V, F], duration /
  frame_seconds / video_index [V]). It is kept on the devices (sharded over the
  local mesh) so a query moves only its own [1, L, d] parts to them.
  """

  def __init__(self, workdir: str, *, prepared_dir: str | None = None, split: str | None = None,
               step: int | None = None, subtitles: str | None = None, rebuild_index: bool = False,
               require_index: bool = False):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from hammer_jax import hammer, prepared_data, restore
    from hammer_jax.evaluator import Evaluator

    self.workdir = workdir
    self.config, self.model_data, self.model, self.params, self.step = restore.restore(workdir, step)
    data = self.model_data if prepared_dir is None else prepared_data.open_prepared(prepared_dir)
    # The model's token-id space is the one its training data was tokenised with.
    data.check_vocabulary(self.model_data.manifest["vocab_sha256"], self.model_data.manifest.get("text_checkpoint", ""))
    data.check_feature_dims(self.model_data.video_dim, self.model_data.subtitle_dim)
    if split is None:
      split = self.config.data.eval_split
      if prepared_dir is not None and split not in data.manifest["splits"] and len(data.manifest["splits"]) == 1:
        split = next(iter(data.manifest["splits"]))  # A user corpus usually holds one split.
    self.data, self.split = data, split
    info = data.split(split)  # Unknown split: one-line PreparedDataError listing the prepared ones.
    if not info["num_videos"]:
      raise SearchError(f"{data.path}: split '{split}' has no videos")
    self.tokenizer = self._tokenizer()
    self.subtitles = None
    if subtitles:
      if data.source != "tvr":
        raise SearchError(f"--subtitles: {data.path} is a {data.source} corpus; subtitle lines are read for "
                          "TVR-layout corpora only")
      self.subtitles = read_subtitles(subtitles)
    self.evaluator = Evaluator(self.model, self.config, data, split, progress=False)
    # The query side gets an evaluator with the smallest batch (one row per device): with
    # eval.batch_size rows, one query and top_k pairs would be padded to e.g. 64 (2 s per query on a CPU).
    qconfig = self.config.copy_and_resolve_references()
    qconfig.eval.batch_size = 1
    self._query_ev = Evaluator(self.model, qconfig, data, split, progress=False)
    self.corpus, self.index_status = self._load_or_build_index(rebuild_index, require_index)
    self.video_names = [info["video_names"][i] for i in self.corpus.video_index]

    # Videos sharded over the devices, the one query replicated. (Evaluator.vr_scores shards queries
    # instead, and pads a single query to several rows: 4x the work for one query on one device.)
    mesh = self.evaluator.mesh
    n_dev, v = mesh.devices.size, len(self.corpus)
    chunk = n_dev * -(-min(v, VR_CHUNK) // n_dev)
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    self._chunks = []
    for j in range(0, v, chunk):
      cols = np.arange(j, min(j + chunk, v))
      pad = np.concatenate([cols, np.full(chunk - len(cols), cols[-1])])  # fixed shape: one compilation
      self._chunks.append((len(cols), jax.device_put(self.corpus.take(pad), sharded)))
    self._replicated = NamedSharding(mesh, PartitionSpec())
    model = self.model

    def vr(params, q_parts, v_parts):
      """f(v, h): q_parts [1, ...] x v_parts [n, ...] -> [n]."""
      n = v_parts["frame_mask"].shape[0]
      q = jax.tree_util.tree_map(lambda x: jax.numpy.broadcast_to(x, (n,) + x.shape[1:]), q_parts)
      return model.apply(params, q, v_parts, retrieval_only=True, method=hammer.Hammer.score_pairs)["vr_score"]
    self._vr = jax.jit(vr)

  # -- tokens ------------------------------------------------------------------

  def _tokenizer(self):
    """The tokenizer the model's data was prepared with, found by its vocabulary fingerprint.

    The manifest's checkpoint path may be gone (a workdir copied to another machine, a new
    venv); the config's checkpoint or the default MiniLM will do if their vocab.txt is the same.
    """
    from hammer_jax import pretrained
    manifest = self.model_data.manifest
    tried = []
    for ckpt in dict.fromkeys(filter(None, (manifest.get("text_checkpoint"), self.config.model.text_checkpoint,
                                            pretrained.DEFAULT_CHECKPOINT))):
      try:
        if pretrained.vocab_fingerprint(ckpt) == manifest["vocab_sha256"]:
          return pretrained.load_tokenizer(ckpt)
        tried.append(f"{ckpt}: other vocabulary")
      except pretrained.CheckpointError as e:
        tried.append(str(e))
    raise SearchError(f"no tokenizer with vocabulary {manifest['vocab_sha256'][:12]}, which {self.model_data.path} "
                      f"was prepared with ({'; '.join(tried)})")

  def tokenize(self, text: str) -> np.ndarray:
    """int32 [n <= max_query_len]: [CLS] ... [SEP], truncated like prepared queries (keeps [SEP])."""
    if not text or not text.strip():
      raise SearchError("empty query")
    ids = self.tokenizer(text.strip(), truncation=True, max_length=int(self.config.data.max_query_len),
                         add_special_tokens=True)["input_ids"]
    if len(ids) <= 2:
      raise SearchError(f"query {text!r} has no tokens in the model's vocabulary")
    return np.asarray(ids, np.int32)

  # -- index -------------------------------------------------------------------

  def index_path(self) -> str:
    """`W/search_index/<corpus-id>_step<N>.npz`; corpus-id = folder name, split, hash of the folder's path."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(self.data.path.rstrip("/")))
    digest = hashlib.sha256(self.data.path.encode()).hexdigest()[:10]
    return os.path.join(self.workdir, "search_index", f"{base}-{self.split}-{digest}_step{self.step}.npz")

  def _index_meta(self) -> dict[str, Any]:
    """What the index was computed from; any change (data rebuilt, other weights, shapes) invalidates it."""
    import jax
    m, info, d = self.data.manifest, self.data.split(self.split), self.config.data
    # A cheap weights fingerprint: retraining a workdir from scratch reuses step numbers.
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(self.params):
      a = np.asarray(leaf)
      h.update(str(a.shape).encode() + a.ravel()[:32].tobytes())
    source = {"build_args": m.get("build_args"), "num_videos": info["num_videos"], "num_frames": info["num_frames"],
              "video_names": info["video_names"], "spec": [d.max_frames, d.clip_len, bool(d.use_subtitles)],
              "params": h.hexdigest()}
    return {"corpus_path": self.data.path, "split": self.split, "step": self.step, "vocab_sha256": m["vocab_sha256"],
            "video_dim": self.data.video_dim, "subtitle_dim": self.data.subtitle_dim, "num_videos": info["num_videos"],
            "fingerprint": hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()}

  def _load_or_build_index(self, rebuild: bool, require: bool):
    from absl import logging
    from hammer_jax.evaluator import Corpus
    path, meta = self.index_path(), self._index_meta()
    why = "not built yet"
    if rebuild:
      why = "--rebuild_index"
    elif os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as z:
          stored = json.loads(str(z["meta"]))
          if stored.get("fingerprint") == meta["fingerprint"]:
            parts = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("parts/")}
            corpus = Corpus(parts, z["video_index"], z["duration"], z["frame_seconds"], z["frame_mask"])
            logging.info("index: loaded %s (%d videos)", path, len(corpus))
            return corpus, "loaded"
          why = "stale (corpus or checkpoint changed)"
      except (OSError, ValueError, KeyError) as e:  # e.g. a file truncated by a full disk
        why = f"unreadable ({e.__class__.__name__})"
    if require and not rebuild:
      raise SearchError(f"{path}: no usable search index ({why}) and --require_index is set; run once without "
                        "--require_index to build it")
    t0 = time.time()
    corpus = self.evaluator.encode_corpus(self.params)
    seconds = time.time() - t0
    arrays = {f"parts/{k}": np.asarray(v) for k, v in corpus.parts.items()}
    arrays.update(video_index=corpus.video_index, duration=corpus.duration, frame_seconds=corpus.frame_seconds,
                  frame_mask=corpus.frame_mask, meta=np.array(json.dumps(meta)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # temp + os.replace: a killed run or a concurrent searcher never sees half a file.
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
    side = path[:-len(".npz")] + ".json"
    with open(f"{side}.tmp-{os.getpid()}", "w", encoding="utf-8") as f:
      json.dump(dict(meta, build_seconds=round(seconds, 3), bytes=os.path.getsize(path)), f, indent=1)
    os.replace(f"{side}.tmp-{os.getpid()}", side)
    logging.info("index: built %s (%d videos, %.1f MB; reason: %s) in %.2f s", path, len(corpus),
                 os.path.getsize(path) / 1e6, why, seconds)
    return corpus, "built"

  # -- search ------------------------------------------------------------------

  def vr_scores(self, q_parts: dict[str, Any]) -> np.ndarray:
    """f(v, h) of one query (parts with leading dim 1) against every corpus video: [V] float32."""
    import jax
    qp = jax.device_put(q_parts, self._replicated)
    outs = [(n, self._vr(self.params, qp, vp)) for n, vp in self._chunks]  # dispatch all, then wait
    return np.concatenate([np.asarray(o)[:n] for n, o in outs]).astype(np.float32)

  def search(self, text: str, top_k: int = 10) -> list[Moment]:
    """The top_k moments (one per video, in the top_k videos by VR), best score first."""
    from hammer_jax import decoding, prepared_data
    if top_k < 1:
      raise SearchError(f"top_k must be at least 1, got {top_k}")
    ids = self.tokenize(text)
    table = prepared_data.QueryTable(desc_id=np.zeros(1, np.int64), desc=[text], type=[""], vid_name=[""],
                                     video_index=np.full(1, -1, np.int64), st=np.zeros(1, np.float32),
                                     ed=np.zeros(1, np.float32), duration=np.zeros(1, np.float32), token_ids=[ids])
    q_parts = self._query_ev.encode_queries(self.params, table, np.arange(1))   # leaves [1, L, ...]
    scores = self.vr_scores(q_parts)                                              # [V]
    log_p_v = scores - scores.max()
    log_p_v = log_p_v - np.log(np.exp(log_p_v).sum())                             # log p(v|h), softmax over corpus
    k = min(top_k, len(self.corpus))
    top = np.argsort(-scores, kind="stable")[:k]                                  # same order as retrieve()
    loc = self._query_ev.localise(self.params, q_parts, self.corpus, np.zeros(k, np.int64), top, k=1)
    st, ed = (np.asarray(x, np.float64) for x in decoding.frames_to_seconds(
        loc["start"], loc["end"], self.corpus.frame_seconds[top], self.corpus.duration[top]))
    score = np.exp(log_p_v[top].astype(np.float64) + loc["log_score"])
    moments = []
    for rank, i in enumerate(np.argsort(-score, kind="stable"), 1):
      name = self.video_names[top[i]]
      subs = None
      if self.subtitles is not None:  # Lines overlapping [st, ed].
        subs = [s for s in self.subtitles.get(name, []) if s["start"] < ed[i] and s["end"] > st[i]]
      moments.append(Moment(rank, name, float(st[i]), float(ed[i]), float(score[i]),
                            int(self.corpus.video_index[top[i]]), subs))
    return moments


def format_text(query: str, moments: list[Moment]) -> str:
  """Plain-text result table (subtitle lines indented under their moment)."""
  width = max([len(m.vid_name) for m in moments] + [5])
  lines = [f"query: {query}", f"{'rank':>4}  {'video':<{width}}  {'start':>8}  {'end':>8}  {'score':>10}"]
  for m in moments:
    lines.append(f"{m.rank:>4}  {m.vid_name:<{width}}  {m.st:>7.1f}s  {m.ed:>7.1f}s  {m.score:>10.4g}")
    for s in m.subtitles or []:
      lines.append(f"{'':>6}[{s['start']:.1f}-{s['end']:.1f}s] {s['text']}")
  return "\n".join(lines)


def _quiet_startup_notices() -> None:
  """Keeps stderr to our own lines: drops jax's TPU probe and TFDS's per-feature deprecation notices."""
  import logging as std_logging
  from absl import logging
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)

  class Drop(std_logging.Filter):
    def filter(self, record):
      return "FeatureConnector.dtype" not in record.getMessage()
  logging.get_absl_handler().addFilter(Drop())


def main(argv):
  from absl import app
  from absl import flags as absl_flags
  f = absl_flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if f.query is None and not f.interactive:
    sys.exit("error: give --query=TEXT or --interactive")
  if f.query is not None and not f.query.strip():
    sys.exit("error: empty query")  # before loading anything
  from hammer_jax import logs, prepared_data, pretrained, restore
  logs.quiet_library_logs()
  _quiet_startup_notices()

  def answer(searcher: MomentSearcher, text: str) -> None:
    moments = searcher.search(text, f.top_k)
    print(json.dumps([m.to_json() for m in moments]) if f.json else format_text(text, moments), flush=True)

  try:
    searcher = MomentSearcher(f.workdir, prepared_dir=f.prepared_dir, split=f.split, step=f.step,
                              subtitles=f.subtitles, rebuild_index=f.rebuild_index, require_index=f.require_index)
    if f.query is not None:
      answer(searcher, f.query)
    while f.interactive:
      print("query> ", end="", file=sys.stderr, flush=True)  # stderr: stdout stays parseable with --json
      try:
        line = sys.stdin.readline()
      except KeyboardInterrupt:
        break
      if not line.strip():  # EOF ("") or an empty line
        break
      try:
        answer(searcher, line.strip())
      except SearchError as e:  # e.g. a query with no known token: say so and keep going
        print(f"error: {e}", file=sys.stderr, flush=True)
  except (SearchError, restore.RestoreError, prepared_data.PreparedDataError, pretrained.CheckpointError) as e:
    sys.exit(f"error: {e}")


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
  flags.DEFINE_string("query", None, "The query text.")
  flags.DEFINE_integer("top_k", 10, "Moments printed (one per video, from the top_k videos).", lower_bound=1)
  flags.DEFINE_string("split", None, "Corpus split (default: the config's eval split).")
  flags.DEFINE_string("prepared_dir", None, "A corpus prepared with data_prep.tvr (default: the workdir's data).")
  flags.DEFINE_string("subtitles", None, "tvqa_preprocessed_subtitles.jsonl: print the lines of each moment.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_bool("json", False, "Print a JSON list of {rank, vid_name, st, ed, score, subtitles?}.")
  flags.DEFINE_bool("interactive", False, "Read queries from stdin, one per line, until an empty line or EOF.")
  flags.DEFINE_bool("rebuild_index", False, "Recompute the corpus index even if a current one is saved.")
  flags.DEFINE_bool("require_index", False, "Fail instead of building a missing or stale index.")


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
