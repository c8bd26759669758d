r"""A web page for moment search: a query box over one corpus, answered in the browser.

  python -m hammer_jax.app --workdir=W [--prepared_dir=DIR] [--split=S] [--step=N]
      [--subtitles=tvqa_preprocessed_subtitles.jsonl] [--videos=FOLDER] [--candidates=K]
      [--port=7860] [--host=127.0.0.1]

A Gradio page around `search.MomentSearcher`, the searcher of
`python -m hammer_jax.search`: the same corpus flags, the same index, the same
moments (no scoring here). The model and the indices load once, at start-up;
each query is one `search` call. The page lists the ranked moments (video,
start, end, score), each over a timeline bar of its video with the predicted
span highlighted, the subtitle lines inside the moment (`--subtitles`) and a
player that plays the moment (`--videos` holding `<vid_name>.mp4`), and says
how long the query took and which retrieval answered it. When a first-stage
index exists (`python -m hammer_jax.index`), the page offers two-stage and
exhaustive search, and the first stage's K. Two-stage search reads its K
candidates from the index's parts store (`retrieval/parts_store.py`); the
exhaustive mode beside it streams every video's parts from the same store per
query (memory stays that of a block of videos), and is offered up to
EXHAUSTIVE_MAX_STORED videos (past that a query would read and score the whole
corpus: minutes to hours).

`answer(searchers, text, ...)` is the page's query function without a browser
(tests call it); queries are served one at a time (one model, one device).
"""

from __future__ import annotations

import copy
import html
import logging as std_logging
import os
import sys
import threading
import time
import urllib.parse
from typing import Any

import numpy as np

from hammer_jax import startup
from hammer_jax.errors import HammerError, UsageError
from hammer_jax.retrieval.searcher import CorpusSearcher, Moment, SearchError

MODE_LABELS = {"two_stage": "two-stage", "exhaustive": "exhaustive"}
EXHAUSTIVE_MAX_STORED = 20_000  # videos: beyond, exhaustive search over a parts store is not offered
CSS = """
.hj-moment {border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; margin: 8px 0;}
.hj-head {font-size: 15px; margin-bottom: 4px;}
.hj-rank {display: inline-block; min-width: 2em; font-weight: 700;}
.hj-axis {display: flex; justify-content: space-between; font-size: 12px; color: #57606a;}
.hj-subs {margin: 6px 0 0 0; padding-left: 1.2em; font-size: 13px;}
.hj-error {color: #b42318; font-weight: 600;}
.hj-note {color: #9a6700;}
"""


class Searchers:
  """The searchers of one corpus by retrieval mode, one restored model between them, one query at a time.

  Two-stage search needs a first-stage index; with one, an exhaustive searcher
  is a shallow copy of the two-stage one without it (model, params, parts
  cache or store, and subtitles shared, so nothing loads twice). The lock
  serves queries one after the other: a search runs device programs of the
  shared model and sets per-query state on its searcher (`last_notices`,
  `candidates`).
  """

  def __init__(self, searcher: CorpusSearcher, videos: str | None = None):
    from hammer_jax.retrieval.parts_store import StoredCorpus
    self.by_mode = {searcher.retrieval: searcher}
    stored = isinstance(searcher.corpus, StoredCorpus)
    if searcher.retrieval == "two_stage" and (not stored or len(searcher.corpus) <= EXHAUSTIVE_MAX_STORED):
      exhaustive = copy.copy(searcher)
      exhaustive.first_stage, exhaustive.retrieval, exhaustive.last_notices = None, "exhaustive", []
      self.by_mode["exhaustive"] = exhaustive
    self.modes = list(self.by_mode)  # The default (two-stage when it exists) first.
    self.default_candidates = searcher.candidates
    self.videos = os.path.abspath(videos) if videos else None
    self.lock = threading.Lock()

  def warm_up(self) -> None:
    """One query per mode: compiles the device programs at start-up, not in the first user's latency."""
    for searcher in self.by_mode.values():
      searcher.search("warm up", 1)
      searcher.last_notices = []

  @property
  def corpus_size(self) -> int:
    return len(self.by_mode[self.modes[0]].corpus)


def answer(searchers: Searchers, text: str, top_k: Any = 10, candidates: Any = None,
           mode: str | None = None) -> tuple[str, list[dict[str, Any]], str]:
  """(results HTML, `search --json`'s list, status line) of one query; a bad query gives a message, not an error."""
  try:
    mode = mode or searchers.modes[0]
    if mode not in searchers.by_mode:
      raise SearchError(f"retrieval mode {mode!r} is not available here (available: {', '.join(searchers.modes)})")
    searcher = searchers.by_mode[mode]
    top_k = _whole(top_k, "number of moments")
    k = _whole(candidates, "first-stage K") if candidates not in (None, "") else searchers.default_candidates
    with searchers.lock:
      searcher.candidates = k
      t0 = time.perf_counter()
      moments = searcher.search("" if text is None else str(text), top_k)
      seconds = time.perf_counter() - t0
      notices = list(searcher.last_notices)
  except SearchError as e:
    return f'<p class="hj-error">{html.escape(str(e))}</p>', [], f"error: {e}"
  except Exception as e:  # pylint: disable=broad-except  # The page says it in one line; the server keeps serving.
    std_logging.getLogger(__name__).exception("query %r failed", text)
    return (f'<p class="hj-error">internal error: {html.escape(e.__class__.__name__)} (see the server log)</p>', [],
            f"error: internal error ({e.__class__.__name__}: {(str(e).splitlines() or [''])[0]})")
  how = f"{MODE_LABELS[mode]} over {len(searcher.corpus)} videos"
  if mode == "two_stage":
    how += f", first stage K={searcher.candidates}"
  status = f"{len(moments)} moments in {seconds * 1000:.0f} ms ({how})"
  if notices:
    status += " | note: " + "; ".join(notices)
  return render(searcher, moments, notices, searchers.videos), [m.to_json() for m in moments], status


def _whole(value: Any, what: str) -> int:
  """A positive whole number from a page field (Gradio gives floats, None for an empty box)."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise SearchError(f"{what}: give a whole number, got {value!r}") from None
  if not number.is_integer() or number < 1:
    raise SearchError(f"{what} must be a whole number of at least 1, got {value!r}")
  return int(number)


def render(searcher: CorpusSearcher, moments: list[Moment], notices: list[str], videos: str | None) -> str:
  """The ranked moments as HTML: one card each, with timeline bar, subtitle lines and player."""
  parts = [f'<p class="hj-note">note: {html.escape(n)}</p>' for n in notices]
  positions = searcher.corpus.positions_of(np.array([m.video_position for m in moments], np.int64))
  for m, pos in zip(moments, positions):
    duration = float(searcher.corpus.duration[pos])
    parts.append(
        f'<div class="hj-moment" data-rank="{m.rank}" data-vid="{html.escape(m.vid_name)}" data-st="{m.st:.3f}" '
        f'data-ed="{m.ed:.3f}" data-score="{m.score:.6g}">'
        f'<div class="hj-head"><span class="hj-rank">{m.rank}.</span><b>{html.escape(m.vid_name)}</b> '
        f'&nbsp; {m.st:.1f} s &ndash; {m.ed:.1f} s &nbsp; <span title="p(v|h) * p_start * p_end">score '
        f'{m.score:.4g}</span></div>{timeline(m.st, m.ed, duration)}')
    if m.subtitles is not None:
      lines = "".join(f'<li>[{s["start"]:.1f}&ndash;{s["end"]:.1f} s] {html.escape(s["text"])}</li>'
                      for s in m.subtitles) or "<li><i>no subtitle line in this moment</i></li>"
      parts.append(f'<ul class="hj-subs">{lines}</ul>')
    if videos:
      parts.append(player(videos, m))
    parts.append("</div>")
  if not moments:
    parts.append("<p>no moments</p>")
  return "".join(parts)


def timeline(st: float, ed: float, duration: float) -> str:
  """An SVG bar of the whole video (0 .. duration s) with [st, ed] highlighted."""
  scale = 1000.0 / max(duration, 1e-6)
  x0 = min(max(st * scale, 0.0), 1000.0)
  width = max(min(ed * scale, 1000.0) - x0, 3.0)  # A very short moment stays visible.
  return (f'<svg class="hj-timeline" width="100%" height="14" viewBox="0 0 1000 14" preserveAspectRatio="none" '
          f'role="img" aria-label="{st:.1f} to {ed:.1f} s of {duration:.1f} s">'
          f'<rect x="0" y="2" width="1000" height="10" rx="3" fill="#d8dee4"/>'
          f'<rect class="hj-span" x="{x0:.1f}" y="0" width="{width:.1f}" height="14" rx="2" fill="#e8590c"/></svg>'
          f'<div class="hj-axis"><span>0 s</span><span>{duration:.1f} s</span></div>')


def player(videos: str, m: Moment) -> str:
  """An HTML5 player of `<videos>/<vid_name>.mp4` starting at the moment (media fragment #t=st,ed)."""
  path = os.path.join(videos, m.vid_name + ".mp4")
  if not os.path.isfile(path):
    return f'<p class="hj-note">no {html.escape(m.vid_name)}.mp4 in {html.escape(videos)}</p>'
  # Gradio serves files under launch(allowed_paths=[videos]) at gradio_api/file=<path>.
  src = f"gradio_api/file={urllib.parse.quote(path)}#t={m.st:.2f},{m.ed:.2f}"
  return f'<video class="hj-video" controls preload="metadata" width="480" src="{src}"></video>'


def build_page(searchers: Searchers, title: str):
  """The Gradio Blocks of the page; its search is also the HTTP API's `/search`."""
  import gradio as gr
  two_stage = "two_stage" in searchers.modes
  with gr.Blocks(title="hammer_jax moment search", analytics_enabled=False) as page:
    gr.Markdown(f"## Moment search\n{title}")
    with gr.Row():
      query = gr.Textbox(label="query", placeholder="e.g. the man opens the door", scale=4, elem_id="query")
      button = gr.Button("Search", variant="primary", scale=1, elem_id="search")
    with gr.Row():
      top_k = gr.Slider(1, min(100, searchers.corpus_size), value=min(10, searchers.corpus_size), step=1,
                        label="moments", elem_id="top_k")
      # Shown only when there is a choice: without a first-stage index every query is exhaustive.
      candidates = gr.Number(searchers.default_candidates, precision=0, minimum=1, label="first-stage K",
                             visible=two_stage, elem_id="candidates")
      mode = gr.Radio([(MODE_LABELS[m], m) for m in searchers.modes], value=searchers.modes[0], label="retrieval",
                      visible=len(searchers.modes) > 1, elem_id="mode")
    status = gr.Textbox(label="status", interactive=False, elem_id="status")
    results = gr.HTML(elem_id="results")
    with gr.Accordion("JSON (as python -m hammer_jax.search --json)", open=False):
      moments = gr.JSON(elem_id="json")
    run = lambda text, k, cand, m: answer(searchers, text, k, cand, m)
    inputs, outputs = [query, top_k, candidates, mode], [results, moments, status]
    # One query at a time (the lock in `answer` covers every other way in, too).
    button.click(run, inputs, outputs, api_name="search", concurrency_limit=1, concurrency_id="search")
    query.submit(run, inputs, outputs, api_visibility="private", concurrency_limit=1, concurrency_id="search")
  return page


def main(argv):
  del argv
  from absl import flags as absl_flags
  from hammer_jax import search
  f = absl_flags.FLAGS
  if f.videos and not os.path.isdir(f.videos):
    raise UsageError(f"--videos={f.videos}: not a folder")
  startup.start()
  search._quiet_startup_notices()  # pylint: disable=protected-access
  std_logging.getLogger("httpx").setLevel(std_logging.WARNING)  # Gradio's own start-up probes, one line each
  try:
    import gradio  # noqa: F401  (before the model loads: a missing package is a quick error)
  except ImportError:
    raise UsageError('the page needs gradio: pip install -e ".[app]"') from None
  searcher = search.MomentSearcher(f.workdir, prepared_dir=f.prepared_dir, split=f.split, step=f.step,
                            subtitles=f.subtitles, candidates=f.candidates)
  searchers = Searchers(searcher, f.videos)
  title = (f"`{searcher.data.path}` split `{searcher.split}`: {len(searcher.corpus)} videos; checkpoint step "
           f"{searcher.step} of `{f.workdir}`; retrieval: {', '.join(MODE_LABELS[m] for m in searchers.modes)}")
  page = build_page(searchers, title)
  searchers.warm_up()
  try:
    page.queue(default_concurrency_limit=1).launch(
        server_name=f.host, server_port=f.port, quiet=True, ssr_mode=False, show_error=False, css=CSS,
        allowed_paths=[searchers.videos] if searchers.videos else None, prevent_thread_lock=True)
  except OSError as e:  # e.g. the port is taken
    raise HammerError(f"cannot serve on {f.host}:{f.port} ({e}); pass another --port or --host") from None
  print(f"app: {len(searcher.corpus)} videos ({', '.join(searchers.modes)}), serving on http://{f.host}:{f.port}",
        file=sys.stderr, flush=True)
  page.block_thread()  # Until Ctrl-C.


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
  flags.DEFINE_string("split", None, "Corpus split (default: the config's eval split).")
  flags.DEFINE_string("prepared_dir", None, "A corpus prepared with data_prep.tvr (default: the workdir's data).")
  flags.DEFINE_string("subtitles", None, "tvqa_preprocessed_subtitles.jsonl: show the lines of each moment.")
  flags.DEFINE_string("videos", None, "Folder of <vid_name>.mp4: a player for each moment.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
  flags.DEFINE_integer("candidates", None, "Two-stage K at start (default: config.eval.first_stage_candidates).",
                       lower_bound=1)
  flags.DEFINE_integer("port", 7860, "HTTP port.", lower_bound=1, upper_bound=65535)
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")


if __name__ == "__main__":
  startup.run(main, define_flags)
