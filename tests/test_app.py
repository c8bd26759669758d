"""The moment-search page (hammer_jax/app.py): same moments as `hammer_jax.search`, bad input is a message,
a real headless Chromium lists the moments, concurrent queries each get their own answer.

One app process per module (started first, so that its start-up overlaps the
search CLI's and this process's own searcher), on the tiny trained workdir with
a subtitle file and a folder of stand-in `<vid_name>.mp4` files.
"""

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import helpers

from helpers import REPO_ROOT
from hammer_jax import app
from hammer_jax.data import prepared_data
from hammer_jax.search import MomentSearcher

TOP_K = 4
ROW = 3  # the planted val query the page is asked (its text as typed)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL_BROWSER = "apt-get install chromium chromium-driver; pip install -e '.[test]' (selenium)"

# All on one xdist worker: one app process, one searcher (module fixtures) for the whole module.
pytestmark = pytest.mark.xdist_group("app")


def _need(ok: bool, what: str) -> None:
  """Skips without `what`, but on CI (CI=true) a missing browser or package fails the run."""
  helpers.require(ok, what)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _same_moments(got, want):
  """JSON moment lists: same ranks, videos, spans and subtitle lines; scores to float tolerance."""
  assert [{k: v for k, v in m.items() if k != "score"} for m in got] == \
         [{k: v for k, v in m.items() if k != "score"} for m in want]
  assert [m["score"] for m in got] == pytest.approx([m["score"] for m in want], rel=1e-4, abs=1e-12)


@pytest.fixture(scope="module")
def corpus_files(synthetic_prepared, tmp_path_factory):
  """A subtitle file (two lines per video) and a video folder with a stand-in mp4 for every other video."""
  root = tmp_path_factory.mktemp("app_corpus")
  names = [n for s in synthetic_prepared.manifest["splits"] for n in synthetic_prepared.split(s)["video_names"]]
  subs = root / "subs.jsonl"
  subs.write_text("".join(json.dumps({"vid_name": n, "sub": [{"start": 0.0, "end": 2.0, "text": f"{n} opening"},
                                                              {"start": 2.0, "end": 99.0, "text": f"{n} rest"}]}) + "\n"
                          for n in names))
  videos = root / "videos"
  videos.mkdir()
  for n in names[::2]:
    (videos / f"{n}.mp4").write_bytes(f"stand-in video {n}".encode())
  query = prepared_data.read_queries(synthetic_prepared, "val").desc[ROW]
  return dict(subtitles=str(subs), videos=str(videos), query=query)


@pytest.fixture(scope="module")
def started(trained_workdir, corpus_files, tmp_path_factory):
  """The app process and the search CLI (for the same query), both started at once."""
  _need(importlib.util.find_spec("gradio") is not None, "no gradio here: pip install -e '.[test]'")
  logs = tmp_path_factory.mktemp("app_logs")
  port = _free_port()
  app_log = open(logs / "app.log", "w")
  server = subprocess.Popen([sys.executable, "-m", "hammer_jax.app", f"--workdir={trained_workdir}",
                             f"--subtitles={corpus_files['subtitles']}", f"--videos={corpus_files['videos']}",
                             f"--port={port}"], cwd=REPO_ROOT, stdout=app_log, stderr=subprocess.STDOUT)
  cli = subprocess.Popen([sys.executable, "-m", "hammer_jax.search", f"--workdir={trained_workdir}",
                          f"--query={corpus_files['query']}", "--json", f"--top_k={TOP_K}",
                          f"--subtitles={corpus_files['subtitles']}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
  yield dict(server=server, url=f"http://127.0.0.1:{port}/", log=logs / "app.log", cli=cli)
  for proc in (server, cli):
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
  app_log.close()


@pytest.fixture(scope="module")
def url(started):
  """The page's address, once it answers HTTP (the app's log in the failure message otherwise)."""
  deadline = time.time() + 300
  while True:
    if started["server"].poll() is not None:
      pytest.fail(f"the app exited ({started['server'].returncode}):\n{started['log'].read_text()[-3000:]}")
    try:
      with urllib.request.urlopen(started["url"], timeout=5) as r:
        if r.status == 200:
          return started["url"]
    except OSError:
      pass
    if time.time() > deadline:
      pytest.fail(f"the app did not answer in 300 s:\n{started['log'].read_text()[-3000:]}")
    time.sleep(0.5)


@pytest.fixture(scope="module")
def searchers(trained_workdir, corpus_files):
  return app.Searchers(MomentSearcher(trained_workdir, subtitles=corpus_files["subtitles"]), corpus_files["videos"])


def test_the_query_function_gives_the_search_clis_moments(started, searchers, corpus_files):
  out, err = started["cli"].communicate(timeout=300)
  assert started["cli"].returncode == 0, err[-3000:]
  page, moments, status = app.answer(searchers, corpus_files["query"], TOP_K)
  _same_moments(moments, json.loads(out))
  assert status.startswith(f"{TOP_K} moments in ") and f"exhaustive over {searchers.corpus_size} videos" in status, status
  assert page.count('class="hj-moment"') == TOP_K and page.count("<svg") == TOP_K
  for m in moments:  # every moment's subtitle lines; a player where the folder has the video
    assert all(f"{s['text']}</li>" in page for s in m["subtitles"]) and m["subtitles"]
    has_video = os.path.exists(os.path.join(corpus_files["videos"], m["vid_name"] + ".mp4"))
    assert (f"{m['vid_name']}.mp4#t={m['st']:.2f},{m['ed']:.2f}\"" in page) == has_video
    assert (f"no {m['vid_name']}.mp4 in" in page) == (not has_video)


def test_bad_input_is_a_message_and_the_next_query_answers(searchers, corpus_files):
  for text, top_k, candidates, mode, message in (
      ("", TOP_K, None, None, "empty query"),
      ("   ", TOP_K, None, None, "empty query"),
      ("\U0001F642\U0001F642", TOP_K, None, None, "all [UNK]"),
      ("a dog", 0, None, None, "at least 1"),
      ("a dog", 2.5, None, None, "whole number"),
      ("a dog", TOP_K, "many", None, "first-stage K: give a whole number"),
      ("a dog", TOP_K, None, "two_stage", "not available here (available: exhaustive)")):
    page, moments, status = app.answer(searchers, text, top_k, candidates, mode)
    assert message in page and status.startswith("error: ") and message in status, (text, status)
    assert moments == [] and "Traceback" not in page and "\n" not in status
  limit = searchers.by_mode["exhaustive"].config.data.max_query_len
  page, moments, status = app.answer(searchers, " ".join(["someone"] * 200), TOP_K)  # read, but cut
  assert len(moments) == TOP_K and f"the first {limit - 2}" in status and f"the first {limit - 2}" in page
  page, moments, status = app.answer(searchers, corpus_files["query"], TOP_K)
  assert len(moments) == TOP_K and "note" not in status and "hj-note\">note" not in page


def test_a_browser_lists_the_moments_of_a_planted_query(url, searchers, corpus_files):
  """Headless Chromium types a planted val query; the page lists the query function's moments.

  The tiny model trained for 6 steps ranks videos almost at random, so the check is
  that the page shows exactly what `answer` (== `hammer_jax.search`, above) returns,
  not that the planted video comes first. An empty query first: a message, and the
  page keeps serving.
  """
  _need(os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), f"no Chromium here: {INSTALL_BROWSER}")
  try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
  except ImportError:
    _need(False, f"no selenium here: {INSTALL_BROWSER}")
  from PIL import Image
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  try:
    wait = WebDriverWait(driver, 120)
    driver.get(url)
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
    driver.find_element(By.CSS_SELECTOR, "#search").click()                      # empty: a message
    wait.until(lambda d: "empty query" in d.find_element(By.CSS_SELECTOR, "#results").text)
    box.send_keys(corpus_files["query"])
    driver.find_element(By.CSS_SELECTOR, "#search").click()
    cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hj-moment"))
    status = driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
    _, want, _ = app.answer(searchers, corpus_files["query"], 10)                 # the page's default: 10 moments
    listed = [(c.get_attribute("data-vid"), float(c.get_attribute("data-st")), float(c.get_attribute("data-ed")))
              for c in cards]
    assert listed == [(m["vid_name"], pytest.approx(m["st"], abs=1e-3), pytest.approx(m["ed"], abs=1e-3))
                      for m in want], status
    assert status.startswith(f"{len(want)} moments in ") and "exhaustive" in status
    assert all(c.find_elements(By.CSS_SELECTOR, "svg .hj-span") for c in cards)
    assert f"{want[0]['vid_name']} rest" in cards[0].text                         # its subtitle line
    players = driver.find_elements(By.CSS_SELECTOR, "#results video")
    with_video = [m for m in want if os.path.exists(os.path.join(corpus_files["videos"], m["vid_name"] + ".mp4"))]
    assert len(players) == len(with_video) > 0
    src = players[0].get_attribute("src")                                         # absolute, as the browser resolved it
    assert src.endswith(f"#t={with_video[0]['st']:.2f},{with_video[0]['ed']:.2f}")
    with urllib.request.urlopen(src.split("#")[0], timeout=30) as r:             # served from --videos
      assert r.read() == f"stand-in video {with_video[0]['vid_name']}".encode()
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert shot.size[0] >= 1000 and len(colours) > 20, len(colours)             # not a blank page
  finally:
    driver.quit()


def test_two_queries_at_once_each_get_their_own_answer(url, searchers):
  """Through the HTTP API (two clients) and the query function (two threads), submitted together."""
  from gradio_client import Client
  texts = ["someone opens the door", "a red cup on the table"]
  want = [app.answer(searchers, t, TOP_K)[1] for t in texts]
  with pytest.raises(AssertionError):  # different answers: a swap would show
    _same_moments(want[0], want[1])
  clients = [Client(url, verbose=False) for _ in texts]
  got, start = [None, None], threading.Barrier(2)

  def ask(i, through_http):
    start.wait()
    if through_http:
      got[i] = clients[i].predict(texts[i], TOP_K, searchers.default_candidates, "exhaustive", api_name="/search")[1]
    else:
      got[i] = app.answer(searchers, texts[i], TOP_K)[1]

  for through_http in (True, False):
    threads = [threading.Thread(target=ask, args=(i, through_http)) for i in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=120)
    for g, w in zip(got, want):
      _same_moments(g, w)
    got = [None, None]


def test_two_stage_and_exhaustive_are_offered_with_a_first_stage_index(trained_workdir, searchers, tmp_path):
  """With `hammer_jax.index` run (on a copy: the shared workdir must stay exhaustive), both modes answer."""
  from hammer_jax import index
  own = tmp_path / "w"
  shutil.copytree(trained_workdir, own, ignore=shutil.ignore_patterns("index", "eval"))
  index.build_index(str(own), progress=False)
  both = app.Searchers(MomentSearcher(str(own)))
  assert both.modes == ["two_stage", "exhaustive"]
  query, v = "someone opens the door", searchers.corpus_size
  _, exhaustive, status = app.answer(both, query, TOP_K, None, "exhaustive")
  assert "exhaustive over" in status
  _same_moments(exhaustive, [{k: m[k] for k in m if k != "subtitles"} for m in app.answer(searchers, query, TOP_K)[1]])
  # K = every video: the exhaustive ranking (test_two_stage.py); K = 3: three moments, and the page says why.
  _, every, status = app.answer(both, query, TOP_K, v, "two_stage")
  assert f"two-stage over {v} videos, first stage K={v}" in status
  assert [m["vid_name"] for m in every] == [m["vid_name"] for m in exhaustive]
  _, three, status = app.answer(both, query, TOP_K, 3, "two_stage")
  assert len(three) == 3 and "first stage K=3" in status and "re-scores the first stage's 3 candidates" in status
  assert app.answer(both, query, TOP_K, None, "exhaustive")[1] == exhaustive    # the modes stay apart


def test_start_up_errors_are_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "hammer_jax.app", f"--workdir={tmp_path}", f"--port={_free_port()}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: "), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
