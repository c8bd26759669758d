"""`python -m data_prep.corpus`: a query-less corpus from feature files, searched with a trained model.

Every layout (a folder of .npy, of .npz, one h5) gives the same prepared
features; durations come from a file or rows x seconds_per_row; the subtitle
stream from subtitle features or zeros; subtitle lines (SRT, WebVTT, TVR jsonl)
land in the prepared folder as TVR's jsonl. Each bad input is one `error:` line
naming the file, the video and the field, and the dataset published before is
left as it was. A trained model indexes and searches the corpus, and refuses
one of other feature widths in one line.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import helpers as dh
from data_prep import corpus
from data_prep.records import ArgumentError, DataError
from hammer_jax.data import input_pipeline as ip
from hammer_jax.data import prepared_data
from helpers import REPO_ROOT
from prep_helpers import assert_data_error, assert_one_line, run_cli, tree_bytes

NAMES = ["clip_a", "clip_b", "clip_c"]
ROWS = {"clip_a": 5, "clip_b": 7, "clip_c": 9}
VIDEO_DIM, SUB_DIM = 16, 8  # The widths of the session's trained model (helpers.SMALL_SYNTHETIC).


def _video(name, dim=VIDEO_DIM):
  return dh.feature_rows(name, ROWS[name], dim)


def _write(root, layout, arrays):
  """`arrays` ({name: array}) in one layout: "npy" / "npz" folder or "h5" file; returns the --features path."""
  if layout == "h5":
    os.makedirs(root, exist_ok=True)
    return dh.write_h5(os.path.join(root, "features.h5"), arrays)
  os.makedirs(root, exist_ok=True)
  for i, (name, a) in enumerate(arrays.items()):
    if layout == "npy":
      np.save(os.path.join(root, name + ".npy"), a)
    elif i % 2:  # The named key among others, compressed; and the one-array file.
      np.savez_compressed(os.path.join(root, name + ".npz"), features=a, other=np.zeros(3))
    else:
      np.savez(os.path.join(root, name + ".npz"), a)
  return str(root)


def _corpus_batch(out, **spec):
  data = prepared_data.open_prepared(out)
  spec = dh.pipeline_spec(**{"max_frames": 16, **spec})
  return data, next(ip.eval_video_batches(data, "corpus", spec, 4, process_index=0, process_count=1))


def test_every_layout_prepares_the_same_features(tmp_path):
  arrays = {n: _video(n) for n in NAMES}
  batches = {}
  for layout in ("npy", "npz", "h5"):
    out = str(tmp_path / f"out_{layout}")
    m = corpus.prepare_corpus(out, features_path=_write(tmp_path / layout, layout, arrays), subtitle_dim=SUB_DIM)
    assert m["source"] == "corpus" and m["vocab_sha256"] is None and m["splits"]["corpus"]["num_queries"] == 0
    assert m["splits"]["corpus"]["video_names"] == NAMES
    data, batches[layout] = _corpus_batch(out)
    assert not data.has_queries and len(prepared_data.read_queries(data, "corpus")) == 0
  with pytest.raises(prepared_data.PreparedDataError, match="without queries.*cannot be trained"):
    ip.TrainBatches(data, "corpus", dh.pipeline_spec(max_frames=16), local_batch_size=2, seed=0)
  for layout, b in batches.items():
    for i, n in enumerate(NAMES):
      np.testing.assert_array_equal(b["video"][i, :ROWS[n]], arrays[n], err_msg=layout)
      assert b["frame_mask"][i].sum() == ROWS[n] and b["duration"][i] == pytest.approx(ROWS[n] * 1.5)
    assert not b["subtitle"].any() and b["example_mask"].tolist() == [1, 1, 1, 0]
    for k in b:
      np.testing.assert_array_equal(b[k], batches["npy"][k], err_msg=f"{layout} {k}")


def test_durations_from_a_file_or_rows_times_seconds_per_row(tmp_path):
  features = _write(tmp_path / "npy", "npy", {n: _video(n) for n in NAMES})
  given = {"clip_a": 7.0, "clip_b": 9.5, "clip_c": 15.2}  # 5, 7 and 11 rows of 1.5 s: clip_c is 2 rows off
  csv = tmp_path / "durations.csv"
  csv.write_text("video,seconds\n" + "".join(f"{n},{d}\n" for n, d in given.items()) + "unused_video,3\n")
  tsv = tmp_path / "durations.tsv"
  tsv.write_text("".join(f"{n}\t{d}\n" for n, d in given.items()))
  video2dur = dh.write_json(str(tmp_path / "video2dur.json"),
                            {"val": {n: [d, i] for i, (n, d) in enumerate(given.items())}})
  plain = dh.write_json(str(tmp_path / "durations.json"), given)
  for durations in (str(csv), str(tsv), video2dur, plain):
    out = str(tmp_path / ("out_" + os.path.basename(durations).replace(".", "_")))
    m = corpus.prepare_corpus(out, features_path=features, durations=durations)
    _, b = _corpus_batch(out)
    np.testing.assert_allclose(b["duration"][:3], [given[n] for n in NAMES], rtol=1e-6)
    assert b["frame_seconds"][:3].tolist() == [1.5] * 3
    repaired = m["splits"]["corpus"]["repaired"]
    assert list(repaired.values()) == [1] and m["splits"]["corpus"]["examples"][next(iter(repaired))] == ["clip_c"]
  assert m["splits"]["corpus"]["noted"] == {}
  out = str(tmp_path / "out_rows")
  m = corpus.prepare_corpus(out, features_path=features, seconds_per_row=2.0, max_frames=6)
  _, b = _corpus_batch(out)
  assert b["duration"][:3].tolist() == [10.0, 14.0, 18.0]
  assert b["frame_mask"][:3].sum(1).tolist() == [5, 6, 6]  # Pooled to at most 6 rows: each covers duration / 6.
  np.testing.assert_allclose(b["frame_seconds"][:3], [2.0, 14 / 6, 3.0], rtol=1e-6)


def test_subtitle_features_or_zeros(tmp_path, capsys):
  features = _write(tmp_path / "npy", "npy", {n: _video(n) for n in NAMES})
  subs = {}
  for n in NAMES[:2]:  # clip_c has no subtitles: zeros, mask 0, counted.
    mask = (np.arange(ROWS[n]) % 2).astype(np.float32)
    subs[n], subs[n + "-mask"] = dh.feature_rows("sub-" + n, ROWS[n], SUB_DIM) * mask[:, None], mask
  sub_h5 = dh.write_h5(str(tmp_path / "sub.h5"), subs)
  m = corpus.prepare_corpus(str(tmp_path / "with"), features_path=features, subtitle_features=sub_h5)
  assert m["subtitle_dim"] == SUB_DIM and m["splits"]["corpus"]["repaired"] == {"video without subtitles: zeros": 1}
  data = prepared_data.open_prepared(str(tmp_path / "with"))
  recs = list(data.builder("videos").as_dataset(split="corpus").as_numpy_iterator())
  assert [r["vid_name"].decode() for r in recs] == NAMES
  for r, n in zip(recs, NAMES):
    if n in subs:
      np.testing.assert_array_equal(r["subtitle"], subs[n])
      assert r["subtitle_mask"].tolist() == subs[n + "-mask"].astype(int).tolist()
    else:
      assert not r["subtitle"].any() and not r["subtitle_mask"].any() and r["subtitle"].shape == (9, SUB_DIM)

  class Flags:
    out_dir = str(tmp_path / "zeros")
  from data_prep import cli
  cli.run(lambda _: corpus.prepare_corpus(Flags.out_dir, features_path=features, subtitle_dim=SUB_DIM), Flags())
  printed = capsys.readouterr().out
  assert "no queries" in printed and f"zeros {SUB_DIM} wide with mask 0" in printed
  m = corpus.prepare_corpus(str(tmp_path / "none"), features_path=features)
  assert m["subtitle_dim"] == 0 and "none" in m["subtitle_stream"]
  _, b = _corpus_batch(str(tmp_path / "none"))
  assert "subtitle" not in b


SRT = """1
00:00:01,000 --> 00:00:02,500
<i>Hello</i> there,
Sheldon.

2
00:00:03,000 --> 00:00:04,000
Bye &amp; thanks
"""
VTT = """WEBVTT

NOTE a comment

intro
00:01.000 --> 00:02.500 align:start
<v Penny>Hello</v> there,
Sheldon.

00:00:03.000 --> 00:00:04.000
Bye &amp; thanks
"""
CUES = [{"start": 1.0, "end": 2.5, "text": "Hello there, Sheldon."}, {"start": 3.0, "end": 4.0, "text": "Bye & thanks"}]


@pytest.mark.parametrize("kind", ["srt", "vtt", "jsonl"])
def test_subtitle_lines_become_tvr_jsonl_in_the_folder(tmp_path, kind):
  from hammer_jax.retrieval.searcher import read_subtitles
  features = _write(tmp_path / "npy", "npy", {n: _video(n) for n in NAMES})
  if kind == "jsonl":
    path = dh.write_jsonl(str(tmp_path / "tvqa_preprocessed_subtitles.jsonl"),
                          [{"vid_name": n, "sub": CUES} for n in ("clip_b", "other_video", "clip_a")])
  else:
    os.makedirs(tmp_path / "subs")
    for n in ("clip_a", "clip_b"):
      (tmp_path / "subs" / f"{n}.{kind}").write_text(SRT if kind == "srt" else VTT)
    path = str(tmp_path / "subs")
  out = str(tmp_path / "out")
  m = corpus.prepare_corpus(out, features_path=features, subtitles=path)
  assert m["subtitle_lines"] == f"{m['data_folder']}/subtitles.jsonl"
  assert read_subtitles(os.path.join(out, m["subtitle_lines"])) == {"clip_a": CUES, "clip_b": CUES}
  noted = {"videos without subtitle lines in --subtitles": 1}  # clip_c
  if kind == "jsonl":
    noted["videos in --subtitles without features (left out)"] = 1  # other_video
  assert m["splits"]["corpus"]["noted"] == noted


# -- bad inputs: one line each, the published dataset intact -------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory):
  root = tmp_path_factory.mktemp("published")
  out = str(root / "out")
  corpus.prepare_corpus(out, features_path=_write(root / "npy", "npy", {n: _video(n) for n in NAMES}))
  return out, tree_bytes(out)


def _bad(root, case):
  """(prepare_corpus keyword arguments, (file, record, field, *words) the error names) of one bad input."""
  arrays = {n: _video(n) for n in NAMES}
  folder = str(root / "feats")
  kw = {"features_path": folder}
  if case == "width":
    arrays["clip_b"] = dh.feature_rows("clip_b", 7, VIDEO_DIM - 1)
    expect = (folder, "video clip_b", "video", f"width {VIDEO_DIM - 1}", f"{VIDEO_DIM} of video clip_a")
  elif case in ("nan", "inf"):
    arrays["clip_b"][3, 2] = np.nan if case == "nan" else np.inf
    kw["features_path"] = _write(root / "h5", "h5", arrays) if case == "inf" else folder
    expect = (kw["features_path"], "video clip_b", "video", "NaN or Inf", "row 3")
  elif case == "one_d":
    arrays["clip_c"] = arrays["clip_c"][:, 0]
    expect = (folder, "video clip_c", "video", "expected [rows, dim]", "(9,)")
  elif case == "strings":
    arrays["clip_a"] = np.array([["a", "b"]] * 5)
    expect = (folder, "video clip_a", "video", "not numbers")
  elif case == "duplicate":
    np.savez(os.path.join(_write(folder, "npy", arrays), "clip_b.npz"), arrays["clip_b"])
    expect = (os.path.join(folder, "clip_b.npz"), "video clip_b", "video", "clip_b.npy")
  elif case == "unreadable":
    _write(folder, "npy", arrays)
    with open(os.path.join(folder, "clip_c.npy"), "wb") as f:
      f.write(b"not an array")
    expect = (os.path.join(folder, "clip_c.npy"), "video clip_c", "video", "cannot read")
  elif case == "not_h5":
    kw["features_path"] = str(root / "features.h5")
    open(kw["features_path"], "w").write("text")
    return kw, (kw["features_path"], "<file>", "video", "cannot open as h5")
  elif case == "npz_keys":
    _write(folder, "npy", {n: a for n, a in arrays.items() if n != "clip_a"})
    np.savez(os.path.join(folder, "clip_a.npz"), x=arrays["clip_a"], y=arrays["clip_a"])
    expect = (os.path.join(folder, "clip_a.npz"), "video clip_a", "video", "holds arrays x, y")
  elif case == "empty":
    os.makedirs(folder)
    (root / "feats" / "notes.txt").write_text("nothing here")
    return kw, (folder, "<folder>", "video", "no video")
  elif case == "missing_duration":
    kw["durations"] = dh.write_json(str(root / "d.json"), {"clip_a": 7.5, "clip_b": 10.5})
    expect = (kw["durations"], "video clip_c", "duration", "no duration")
  elif case == "duplicate_duration":
    kw["durations"] = str(root / "d.csv")
    open(kw["durations"], "w").write("clip_a,7.5\nclip_b,10.5\nclip_c,13.5\nclip_a,7\n")
    expect = (kw["durations"], "line 4 (video clip_a)", "vid_name", "first on line 1")
  elif case == "short_duration":
    kw["durations"] = dh.write_json(str(root / "d.json"), {"clip_a": 7.5, "clip_b": 10.5, "clip_c": 6.0})
    expect = (folder, "video clip_c", "video", "9 rows", "6.0 s", "expected 4 rows")
  elif case == "subtitle_width":
    subs = {n: dh.feature_rows("s" + n, ROWS[n], SUB_DIM if n != "clip_c" else SUB_DIM + 2) for n in NAMES}
    kw["subtitle_features"] = dh.write_h5(str(root / "sub.h5"), subs)
    expect = (kw["subtitle_features"], "video clip_c", "subtitle", f"width {SUB_DIM + 2}")
  elif case == "subtitle_dim":
    kw["subtitle_features"] = dh.write_h5(str(root / "sub.h5"), {n: dh.feature_rows(n, ROWS[n], 4) for n in NAMES})
    kw["subtitle_dim"] = SUB_DIM
    _write(folder, "npy", arrays)
    return kw, ("--subtitle_dim", "<flag>", "subtitle_dim", "width 4")
  elif case == "srt_timing":
    os.makedirs(root / "subs")
    (root / "subs" / "clip_a.srt").write_text(SRT.replace("00:00:03,000 -->", "00:00:05,000 -->"))
    kw["subtitles"] = str(root / "subs")
    expect = (str(root / "subs" / "clip_a.srt"), "cue 2 (line 6)", "timing", "before it starts")
  elif case == "duplicate_subtitles":
    os.makedirs(root / "subs")
    for suffix, text in (("srt", SRT), ("vtt", VTT)):
      (root / "subs" / f"clip_a.{suffix}").write_text(text)
    kw["subtitles"] = str(root / "subs")
    expect = (str(root / "subs" / "clip_a.vtt"), "video clip_a", "subtitles", "clip_a.srt")
  if not os.path.exists(folder):
    _write(folder, "npy", arrays)
  return kw, expect


BAD = ["width", "nan", "inf", "one_d", "strings", "duplicate", "unreadable", "not_h5", "npz_keys", "empty",
       "missing_duration", "duplicate_duration", "short_duration", "subtitle_width", "subtitle_dim", "srt_timing",
       "duplicate_subtitles"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_the_published_dataset_stays(tmp_path, published, case):
  out, before = published
  kw, (path, record, field, *words) = _bad(tmp_path, case)
  with pytest.raises(DataError) as e:
    corpus.prepare_corpus(out, **kw)
  if isinstance(e.value, ArgumentError):
    assert_one_line(str(e.value), f"--{field}", *words)
  else:
    assert_data_error(e, path, record, field, *words)
  message = run_cli(lambda: corpus.prepare_corpus(out, **kw), out)  # What `python -m data_prep.corpus` prints.
  assert_one_line(message, *words)
  assert tree_bytes(out) == before


def test_the_binary_exits_with_one_error_line(tmp_path, published):
  out, before = published
  kw, (path, record, field, *words) = _bad(tmp_path, "missing_duration")
  run = subprocess.run([sys.executable, "-m", "data_prep.corpus", f"--features={kw['features_path']}",
                        f"--durations={kw['durations']}", f"--out_dir={out}"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=300)
  errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
  assert len(errors) == 1 and run.stderr.strip().splitlines()[-1] == errors[0], run.stderr[-2000:]
  assert_one_line(errors[0], path, record, f"'{field}'", *words)
  assert tree_bytes(out) == before


# -- a trained model meets the corpus ----------------------------------------------

def test_a_trained_model_indexes_and_searches_the_corpus(trained_workdir, synthetic_prepared, tmp_path):
  from hammer_jax import index
  from hammer_jax.retrieval import index_files
  from hammer_jax.search import MomentSearcher
  assert (synthetic_prepared.video_dim, synthetic_prepared.subtitle_dim) == (VIDEO_DIM, SUB_DIM)
  features = _write(tmp_path / "npy", "npy", {n: _video(n) for n in NAMES})
  fits, wrong = str(tmp_path / "fits"), str(tmp_path / "wrong")
  corpus.prepare_corpus(fits, features_path=features, subtitle_dim=SUB_DIM)
  corpus.prepare_corpus(wrong, features_path=features)  # No subtitle stream: 16 / 0 against 16 / 8.
  config = dh.tiny_config(synthetic_prepared.path)
  data, split = index_files.open_corpus(config, synthetic_prepared, fits, None)
  assert split == "corpus" and not data.has_queries
  with pytest.raises(prepared_data.PreparedDataError) as e:
    index_files.open_corpus(config, synthetic_prepared, wrong, None)
  assert_one_line(str(e.value), wrong, "video 16 / subtitle 0", "model", "video 16 / subtitle 8",
                  f"--subtitle_dim={SUB_DIM}")

  workdir = str(shutil.copytree(trained_workdir, tmp_path / "w", ignore=shutil.ignore_patterns("index", "eval")))
  path = index.build_index(workdir, prepared_dir=fits, progress=False)
  assert os.path.exists(path)
  searcher = MomentSearcher(workdir, prepared_dir=fits)
  assert searcher.retrieval == "two_stage" and searcher.split == "corpus"
  moments = searcher.search("a man opens the door", 2)
  assert len(moments) == 2 and {m.vid_name for m in moments} <= set(NAMES)
  assert all(0 <= m.st <= m.ed <= ROWS[m.vid_name] * 1.5 + 1e-6 for m in moments)


def test_the_documented_commands_run_from_feature_files_to_search(trained_workdir, tmp_path):
  """docs/own_videos.md's commands, as written, on feature files at the session model's widths.

  `runs/tvr` is a copy of the session's trained model; the one change is the
  documented `--subtitle_dim=768` (a TVR model's) made that model's width.
  The page (`hammer_jax.app`) has its own tests (tests/test_app.py).
  """
  import json
  import doc_commands as dc
  env = dc.scratch_repo(tmp_path)
  _write(tmp_path / "my_videos" / "features", "npy", {n: _video(n) for n in NAMES})
  subs = tmp_path / "my_videos" / "subtitles"
  subs.mkdir()
  for n in NAMES:
    (subs / f"{n}.srt").write_text(f"1\n00:00:00,500 --> 00:00:03,000\nthe words of {n}\n")
  os.makedirs(tmp_path / "runs")
  shutil.copytree(trained_workdir, tmp_path / "runs" / "tvr", ignore=shutil.ignore_patterns("index", "eval"))
  every = [c.argv for c in dc.commands("docs/own_videos.md") if c.argv[:1] == ("python",)]
  widths = next(a for a in every if a[1] == "-c")  # the one-liner that prints a model's widths
  printed, _ = dc.run_as_written(widths, tmp_path, env)
  assert printed.split()[:4] == ["video_dim", str(VIDEO_DIM), "subtitle_dim", str(SUB_DIM)], printed
  documented = [a for a in every if a[1] == "-m"]
  modules = [a[2] for a in documented]
  assert modules[:3] == ["data_prep.corpus", "hammer_jax.index", "hammer_jax.search"], modules
  prepare = [f"--subtitle_dim={SUB_DIM}" if a == "--subtitle_dim=768" else a for a in documented[0]]
  assert prepare != list(documented[0])
  dc.run_as_written(prepare, tmp_path, env)
  manifest = json.load(open(tmp_path / "data" / "my_corpus" / "prepared.json"))
  assert manifest["splits"]["corpus"]["num_videos"] == len(NAMES) and manifest["subtitle_lines"]
  dc.run_as_written(documented[1], tmp_path, env)
  assert [p for p in os.listdir(tmp_path / "runs" / "tvr" / "index") if p.endswith(".store")]
  printed, _ = dc.run_as_written(list(documented[2]) + ["--json"], tmp_path, env)
  moments = json.loads(printed[printed.index("["):])
  assert moments and {m["vid_name"] for m in moments} <= set(NAMES)
  assert all("subtitles" in m for m in moments)  # the corpus's subtitle lines, shown without a flag
