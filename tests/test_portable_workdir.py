"""A trained workdir travels: it evaluates, indexes and searches without its BERT folder, from its parameters only."""

import os
import shutil

import jax
import numpy as np
import pytest

from helpers import tiny_config
from hammer_jax import restore, run_config
from hammer_jax import workdir as layout
from hammer_jax.model import pretrained
from hammer_jax.train import checkpointing
from hammer_jax.train import state as ts


@pytest.fixture(scope="module")
def moved_workdir(synthetic_prepared, tmp_path_factory):
  """A tiny run trained from a copy of the MiniLM folder, which is deleted once training is done."""
  from hammer_jax.train import loop
  root = tmp_path_factory.mktemp("moved")
  bert = str(root / "bert_copy")
  shutil.copytree(pretrained.resolve_checkpoint_dir(pretrained.DEFAULT_CHECKPOINT), bert)
  workdir = str(root / "w")
  c = tiny_config(synthetic_prepared.path, **{"model.text_checkpoint": bert, "optim.num_steps": 6,
                                               "checkpoint_every_steps": 6, "log_every_steps": 6,
                                               "eval.every_steps": 0, "eval.final_eval": False})
  loop.train_and_evaluate(c, workdir)
  shutil.rmtree(bert)
  return workdir


def test_the_run_keeps_its_text_models_config_and_vocabulary_not_its_weights(moved_workdir):
  folder = layout.text_model_dir(moved_workdir)
  kept = sorted(os.listdir(folder))
  assert {"config.json", "vocab.txt"} <= set(kept) and "model.safetensors" not in kept, kept
  source = pretrained.resolve_checkpoint_dir(pretrained.DEFAULT_CHECKPOINT)
  for name in kept:  # byte for byte what the (now deleted) copy held
    assert open(os.path.join(folder, name), "rb").read() == open(os.path.join(source, name), "rb").read(), name


def test_a_workdir_without_its_bert_folder_evaluates_indexes_and_searches(moved_workdir):
  from hammer_jax import index as index_binary
  from hammer_jax import search
  from hammer_jax.retrieval.evaluator import Evaluator
  from hammer_jax.retrieval.scorer import PairScorer
  config, data, model, params, step = restore.restore(moved_workdir)
  assert step == 6 and not os.path.exists(config.model.text_checkpoint)
  scorer = PairScorer(model, batch_size=config.eval.batch_size, decoding=config.model.decoding)
  values = dict(Evaluator(scorer, config, data, config.data.eval_split, top_k=5, max_queries=4).run(params))
  assert 0 <= values["VR/r1"] <= 100 and np.isfinite(values["TL/mIoU"])
  path = index_binary.build_index(moved_workdir, progress=False)
  assert os.path.exists(path)
  searcher = search.MomentSearcher(moved_workdir)
  # The tokenizer is the workdir's own copy, not a fallback to the installed MiniLM.
  assert searcher.tokenizer.name_or_path == layout.text_model_dir(moved_workdir)
  assert searcher.retrieval == "two_stage" and len(searcher.search("the dog runs", top_k=3)) == 3


def test_a_workdir_with_neither_text_model_nor_bert_folder_is_refused_in_one_line(moved_workdir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(moved_workdir, workdir, ignore=shutil.ignore_patterns("text_model", "index", "search_index"))
  with pytest.raises(run_config.RestoreError, match="text_model: missing") as e:
    restore.restore(workdir)
  assert "\n" not in str(e.value) and "config.json and vocab.txt" in str(e.value)


def test_inference_restores_the_parameters_only_and_the_same_ones(trained_workdir):
  config, data, _, params, step = restore.restore(trained_workdir)
  training = ts.setup_training(config, data.video_dim, data.subtitle_dim)
  ckpt = checkpointing.Checkpointer(layout.checkpoint_dir(trained_workdir))
  try:
    full = ckpt.restore(training.abstract)
    only, only_step = ckpt.restore_params(ts.abstract_params(training.model, config, data.video_dim,
                                                             data.subtitle_dim, training.mesh))
  finally:
    ckpt.close()
  assert jax.tree_util.tree_leaves(full.opt_state)  # the checkpoint does hold Adam's moments ...
  # ... which the params-only restore leaves out: the same tree as the model's parameters, nothing more.
  assert jax.tree_util.tree_structure(only) == jax.tree_util.tree_structure(full.params)
  assert only_step == step == int(full.step)
  for tree in (only, params["params"]):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), tree,
                           full.params)
