r"""Moment search: the best moments of a video corpus for a typed query.

  python -m hammer_jax.search --workdir=W --query "the man opens the door" [--top_k=10]
      [--split=S | --prepared_dir=DIR [--split=S]] [--subtitles=tvqa_preprocessed_subtitles.jsonl]
      [--json] [--interactive] [--step=N] [--rebuild_index] [--require_index]
      [--retrieval=auto|exhaustive|two_stage] [--candidates=K]

The corpus is a split of the workdir's prepared data (default: the config's
eval split) or of a folder the user prepared with `python -m data_prep.tvr`
(`--prepared_dir`; same feature widths and vocabulary as the model's data). A
moment scores p(v|h) * p_start * p_end as in evaluation (`retrieve.retrieve`):
the query's VR score f(v, h) against every video, softmaxed over the corpus, then
greedy (or the config's) decoding in each of the top_k videos.

The video-only parts of the corpus (all that does not depend on the query) are
the *index* (`retrieval/searcher.py`): built once per (corpus, split, checkpoint
step) and saved as `W/search_index/<corpus-id>_step<N>.npz` (+ `.json`), then
loaded by later runs. A query costs one query encoding + V pair scores + top_k
decodes, through the same `retrieve.retrieve` as evaluation. With a first-stage
index (`python -m hammer_jax.index --workdir=W`, same corpus flags) a query
costs one FAISS search + K pair passes instead (two-stage; `--retrieval`), and
the K candidates' parts are read from the parts store the index build wrote
beside it (`W/index/<corpus-id>_step<N>.store/`): the corpus's parts are not
held in memory, and --rebuild_index / --require_index (which concern the
in-memory cache) do not apply.
"""

from __future__ import annotations

import json
import sys

from hammer_jax import startup
from hammer_jax.retrieval.searcher import CorpusSearcher, Moment, SearchError  # noqa: F401  (the API)


class MomentSearcher(CorpusSearcher):
  """The searcher of a trained workdir: its parameters (`restore.restore`), its text model's tokenizer
  (`run_text_model`), and the indices under it; options as `CorpusSearcher`'s."""

  def __init__(self, workdir: str, *, step: int | None = None, **options):
    from hammer_jax import restore, run_text_model
    from hammer_jax.errors import HammerError
    config, data, model, params, step = restore.restore(workdir, step)
    try:
      tokenizer = run_text_model.load_tokenizer(workdir, config, data)
    except HammerError as e:
      raise SearchError(str(e)) from None
    super().__init__(workdir, config=config, model_data=data, model=model, params=params, step=step,
                     tokenizer=tokenizer, **options)


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
  del argv
  from absl import flags as absl_flags
  from hammer_jax.errors import UsageError
  f = absl_flags.FLAGS
  if f.query is None and not f.interactive:
    raise UsageError("give --query=TEXT or --interactive")
  if f.query is not None and not f.query.strip():
    raise UsageError("empty query")  # before loading anything
  startup.start()
  _quiet_startup_notices()

  def answer(searcher: MomentSearcher, text: str) -> None:
    moments = searcher.search(text, f.top_k)
    for note in searcher.last_notices:
      print(f"note: {note}", file=sys.stderr, flush=True)
    print(json.dumps([m.to_json() for m in moments]) if f.json else format_text(text, moments), flush=True)

  searcher = MomentSearcher(f.workdir, prepared_dir=f.prepared_dir, split=f.split, step=f.step,
                            subtitles=f.subtitles, rebuild_index=f.rebuild_index, require_index=f.require_index,
                            retrieval=f.retrieval, candidates=f.candidates)
  if f.query is not None:
    answer(searcher, f.query)
  while f.interactive:
    print("query> ", end="", file=sys.stderr, flush=True)  # stderr: stdout stays parseable with --json
    try:
      # Bytes, decoded as Python decodes argv: a byte that is not UTF-8 reaches the query check, not readline.
      line = sys.stdin.buffer.readline().decode("utf-8", "surrogateescape")
    except KeyboardInterrupt:
      break
    if not line.strip():  # EOF ("") or an empty line
      break
    try:
      answer(searcher, line.strip())
    except SearchError as e:  # e.g. a query with no known token: say so and keep going
      print(f"error: {e}", file=sys.stderr, flush=True)


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
  flags.DEFINE_string("query", None, "The query text.")
  flags.DEFINE_integer("top_k", 10, "Moments printed (one per video, from the top_k videos).", lower_bound=1)
  flags.DEFINE_string("split", None, "Corpus split (default: the config's eval split).")
  flags.DEFINE_string("prepared_dir", None, "A corpus prepared with data_prep.tvr (default: the workdir's data).")
  flags.DEFINE_string("subtitles", None, "tvqa_preprocessed_subtitles.jsonl: print the lines of each moment.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
  flags.DEFINE_bool("json", False, "Print a JSON list of {rank, vid_name, st, ed, score, subtitles?}.")
  flags.DEFINE_bool("interactive", False, "Read queries from stdin, one per line, until an empty line or EOF.")
  flags.DEFINE_bool("rebuild_index", False, "Recompute the in-memory parts cache even if a current one is saved.")
  flags.DEFINE_bool("require_index", False, "Fail instead of building a missing or stale parts cache.")
  flags.DEFINE_enum("retrieval", "auto", ["auto", "exhaustive", "two_stage"],
                    "auto: two-stage when a current first-stage index exists (python -m hammer_jax.index).")
  flags.DEFINE_integer("candidates", None, "Two-stage K (default: config.eval.first_stage_candidates).",
                       lower_bound=1)


if __name__ == "__main__":
  startup.run(main, define_flags)
