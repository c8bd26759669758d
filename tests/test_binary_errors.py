"""The binaries' one error path: anticipated failures are one `error:` line that names the file, and change nothing.

Each case runs the binary as a user would (a subprocess) on a copy of the
session's trained workdir, and asserts the exit status, that stderr carries
exactly one `error:` line and no traceback, and that the line names the file
at fault and what to do. Before the shared runner (`startup.run`) these were
tracebacks, and a training run with an incompatible config overwrote the
workdir's config.json before its restore failed.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO_ROOT


def _run(binary, *flags, stdin=None, timeout=600):
  out = subprocess.run([sys.executable, "-m", f"hammer_jax.{binary}", *flags], cwd=REPO_ROOT, input=stdin,
                       capture_output=True, timeout=timeout)
  return out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")


def _one_error_line(code, stderr, *names):
  """Exit status 1, one `error:` line and nothing else on stderr but log lines; returns the line."""
  assert code == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-3000:]
  for name in names:
    assert name in errors[0], (name, errors[0])
  return errors[0]


def _copy(workdir, tmp_path, name="w"):
  return shutil.copytree(workdir, tmp_path / name, ignore=shutil.ignore_patterns("eval", "tensorboard"))


def _config_file(tmp_path, workdir):
  """A config file that gives W's config.json back (as `--config=...:path`), so flags can change one field."""
  path = tmp_path / "from_workdir.py"
  path.write_text("import json\nimport ml_collections\n\n\ndef get_config(path):\n"
                  "  return ml_collections.ConfigDict(json.load(open(path)))\n")
  return f"--config={path}:{os.path.join(workdir, 'config.json')}"


def _truncate(path, keep=0.5):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(int(size * keep))


@pytest.fixture(scope="module")
def two_checkpoints(trained_workdir, tmp_path_factory):
  """The trained workdir resumed by `hammer_jax.main` for one more step: checkpoints 6 and 7.

  Also the compatible case: another num_steps (the same model) continues the
  run and config.json then describes it.
  """
  tmp = tmp_path_factory.mktemp("resumed")
  workdir = str(_copy(trained_workdir, tmp))
  code, _, err = _run("main", f"--workdir={workdir}", _config_file(tmp, trained_workdir),
                      "--config.optim.num_steps=7", "--config.checkpoint_every_steps=1",
                      "--config.eval.final_eval=False")
  assert code == 0, err[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6", "7"]
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["num_steps"] == 7
  return workdir


def test_an_incompatible_config_changes_nothing_and_eval_still_works(trained_workdir, tmp_path):
  workdir = str(_copy(trained_workdir, tmp_path))
  config_json = os.path.join(workdir, "config.json")
  before = open(config_json, "rb").read()
  code, _, err = _run("main", f"--workdir={workdir}", _config_file(tmp_path, trained_workdir),
                      "--config.model.dual_encoder_dim=64")
  line = _one_error_line(code, err, config_json, "model.dual_encoder_dim: 256 -> 64", "another --workdir",
                         os.path.join(workdir, "checkpoints", "6"))
  assert "nothing was changed" in line
  assert open(config_json, "rb").read() == before
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]
  code, out, err = _run("eval", f"--workdir={workdir}", "--max_queries=2")
  assert code == 0 and "Wrote" in out, err[-3000:]


def test_a_changed_demo_corpus_is_refused_before_it_is_rebuilt(tmp_path):
  """The demo's corpus under W/data is what W's checkpoints were trained on: another `data.synthetic` is refused."""
  from configs import demo
  from hammer_jax.train import resume
  config = demo.get_config("tiny")
  workdir = tmp_path / "w"
  os.makedirs(workdir / "checkpoints" / "5")
  (workdir / "config.json").write_text(config.to_json_best_effort())
  resume.check_resumable(config, str(workdir))                      # the same config: resumes
  config.data.synthetic.num_train_videos += 1
  with pytest.raises(resume.RestoreError, match=r"data\.synthetic\.num_train_videos: \d+ -> \d+") as e:
    resume.check_resumable(config, str(workdir))
  assert str(workdir / "data") in str(e.value) and "another --workdir" in str(e.value)
  resume.check_resumable(config, str(tmp_path / "fresh"))         # nothing trained there: nothing to refuse


def test_a_truncated_checkpoint_names_the_newest_intact_step(two_checkpoints, tmp_path):
  workdir = str(_copy(two_checkpoints, tmp_path))
  damaged = os.path.join(workdir, "checkpoints", "7")
  data_files = glob.glob(os.path.join(damaged, "state", "ocdbt.process_*", "d", "*"))
  for data_file in data_files:  # every one: eval reads the parameters only, which need not be in the largest
    _truncate(data_file)
  config_json = open(os.path.join(workdir, "config.json"), "rb").read()
  for binary, flags in (("eval", ["--max_queries=2"]),
                        ("main", [_config_file(tmp_path, workdir), "--config.optim.num_steps=8"])):
    code, _, err = _run(binary, f"--workdir={workdir}", *flags)
    _one_error_line(code, err, damaged, "damaged checkpoint", "newest intact step is 6", "--step=6")
  assert open(os.path.join(workdir, "config.json"), "rb").read() == config_json
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6", "7"]


@pytest.mark.parametrize("binary", ["eval", "index", "search", "app"])
def test_a_truncated_config_json(binary, trained_workdir, tmp_path):
  workdir = _copy(trained_workdir, tmp_path)
  _truncate(workdir / "config.json")
  flags = {"search": ["--query=a man walks"], "app": ["--port=1"]}.get(binary, [])
  code, _, err = _run(binary, f"--workdir={workdir}", *flags)
  _one_error_line(code, err, str(workdir / "config.json"), "damaged", "hammer_jax.main")


@pytest.fixture(scope="module")
def indexed(trained_workdir, tmp_path_factory):
  """A copy of the trained workdir with a first-stage index (+ parts store) and a search cache.

  Two-stage search reads the store; the in-memory parts cache is exhaustive search's.
  """
  from hammer_jax import index
  from hammer_jax.search import MomentSearcher
  workdir = str(_copy(trained_workdir, tmp_path_factory.mktemp("indexed")))
  first_stage = index.build_index(workdir, progress=False)
  assert MomentSearcher(workdir).retrieval == "two_stage"
  searcher = MomentSearcher(workdir, retrieval="exhaustive")
  assert os.path.exists(searcher.index_path())
  return workdir, first_stage, searcher.index_path()


def test_a_truncated_first_stage_index(indexed, tmp_path):
  workdir, first_stage, _ = indexed
  keep = tmp_path / "first_stage.npz"
  shutil.copy(first_stage, keep)
  _truncate(first_stage)
  try:
    for binary, flags in (("search", ["--query=a man walks"]), ("app", ["--port=1"])):
      code, _, err = _run(binary, f"--workdir={workdir}", *flags)
      _one_error_line(code, err, first_stage, "unreadable first-stage index", "python -m hammer_jax.index",
                      "--retrieval=exhaustive")
  finally:
    shutil.copy(keep, first_stage)


def test_a_truncated_search_cache_is_rebuilt_or_refused_in_one_line(indexed):
  workdir, _, cache = indexed
  _truncate(cache)
  exhaustive = "--retrieval=exhaustive"
  code, _, err = _run("search", f"--workdir={workdir}", "--query=a man walks", "--require_index", exhaustive)
  _one_error_line(code, err, cache, "unreadable", "without --require_index")
  code, out, err = _run("search", f"--workdir={workdir}", "--query=a man walks", exhaustive)
  assert code == 0 and "query: a man walks" in out, err[-3000:]
  assert "index: built" in err and "reason: unreadable (BadZipFile" in err


def test_a_truncated_index_shard_names_the_shard(tmp_path):
  from hammer_jax import files
  from hammer_jax import index
  from hammer_jax.retrieval import index_files
  path = str(tmp_path / "shard-00000.npz")
  files.atomic_write_npz(path, dict(vectors=[[1.0]], mask=[1], video_index=[0]))
  _truncate(path)
  with pytest.raises(index_files.UnreadableIndexError, match="delete it and run python -m hammer_jax.index") as e:
    index._load_shard(files, path)  # pylint: disable=protected-access
  assert str(e.value).startswith(path)


def test_a_query_that_is_not_utf8(trained_workdir):
  code, out, err = _run("search", f"--workdir={trained_workdir}", "--interactive", "--top_k=2",
                        stdin=b"a man\xff walks\nthe door opens\n")
  assert code == 0 and "Traceback" not in err, err[-3000:]
  assert "error: query 'a man\\udcff walks': not UTF-8 text (byte 0xff at character 6)" in err
  assert "query: the door opens" in out and "a man" not in out              # the next query is answered
  code, _, err = _run("search", f"--workdir={trained_workdir}", b"--query=a\xffb")
  _one_error_line(code, err, "not UTF-8", "byte 0xff")


@pytest.mark.parametrize("binary,flag", [("eval", "--top_k=-3"), ("eval", "--top_k=0"), ("eval", "--max_queries=-1"),
                                         ("search", "--top_k=0"), ("index", "--step=-1")])
def test_counts_below_one_are_refused(binary, flag, tmp_path):
  """Before anything loads: --top_k=0 used to mean the default, --max_queries=-1 all but the last query."""
  code, _, err = _run(binary, f"--workdir={tmp_path}", flag, *(["--query=x"] if binary == "search" else []))
  assert err.strip().count("\n") == 0
  _one_error_line(code, err, flag.split("=")[0], "--helpshort")


def test_the_runner_reports_every_anticipated_error_class():
  """One base class: the errors the binaries raise on purpose derive from it (configs/ without heavy imports)."""
  from configs.base import ConfigError
  from hammer_jax import run_config, startup
  from hammer_jax.errors import HammerError
  from hammer_jax.retrieval import index_files, searcher
  from hammer_jax.train import checkpointing, loop
  for cls in (ConfigError, run_config.RestoreError, searcher.SearchError, index_files.IndexMismatchError,
              index_files.UnreadableIndexError, checkpointing.CheckpointMismatchError,
              checkpointing.DamagedCheckpointError, loop.NonFiniteLossError):
    assert issubclass(cls, HammerError), cls
    assert issubclass(cls, startup.anticipated()), cls
