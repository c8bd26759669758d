"""Test setup: 8 fake CPU devices (set before JAX initialises), a compile cache, shared fixtures."""
import os
import sys
import tempfile

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Multi-process workers (tests/multihost.py) set their own count first.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests (and the subprocesses they start) compile the same tiny programs:
# a persistent compilation cache shared by all of them saves most compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hammer_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from helpers import REPO_ROOT, SMALL_SYNTHETIC, tiny_config  # noqa: E402

if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import pytest  # noqa: E402

# The modules that take longest, longest first. pytest-xdist hands modules to its workers in collection order
# (pytest.ini: --dist loadscope --no-loadscope-reorder; the default reorder would send the modules with the
# most tests first and these, which have few, last), and a run ends when its last long module does: so they
# start first, the demo's learning run and the real-language run on different workers.
LONGEST_FIRST = ("test_learning.py", "test_learning_real_language.py", "test_train.py", "test_multihost_jobs.py",
                 "test_cloud_storage.py", "test_portable_workdir.py", "test_two_stage.py",
                 "test_binary_errors.py", "test_search.py", "test_eval.py", "test_docs.py", "test_corpus_prep.py",
                 "test_parts_store.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module stays in one piece


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory):
  """A small synthetic corpus, converted by the TVR converter (videos_per_shard=8)."""
  from data_prep.demo_corpus import ensure_synthetic_prepared
  root = tmp_path_factory.mktemp("synthetic")
  return ensure_synthetic_prepared(str(root), synthetic=SMALL_SYNTHETIC, videos_per_shard=8, verbose=False)


@pytest.fixture(scope="session")
def trained_workdir(synthetic_prepared, tmp_path_factory):
  """A tiny model trained for a few steps (eval and search tests: weights only need to be non-trivial)."""
  from hammer_jax.train import loop
  workdir = tmp_path_factory.mktemp("trained")
  c = tiny_config(synthetic_prepared.path, **{"optim.num_steps": 6, "checkpoint_every_steps": 6,
                                               "log_every_steps": 6, "eval.every_steps": 0})
  loop.train_and_evaluate(c, str(workdir))
  return str(workdir)
