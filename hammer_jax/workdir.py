"""The layout of a training workdir W: where each part of a run lives.

  W/config.json          the resolved config of the run (`run_config.save_config`, `load_config`)
  W/text_model/          the text checkpoint's config.json and tokenizer files (`run_text_model`),
                         so that W evaluates and searches without the BERT folder it was trained from
  W/checkpoints/<step>/  Orbax checkpoints of the train state
  W/tensorboard/         scalars and the config as hparams
  W/eval/<name>_step<N>/ one evaluation (`eval_dir`): predictions, metrics, plots
  W/data/                the demo's synthetic corpus (built by its first run only)
  W/search_index/        saved corpora for search (`retrieval/index_files.py`)
  W/index/               first-stage indices (`retrieval/index_files.py`)

Paths only: reading and writing them is the business of the modules named above.
"""

from __future__ import annotations

from hammer_jax import files


def config_path(workdir: str) -> str:
  return files.join(workdir, "config.json")


def text_model_dir(workdir: str) -> str:
  return files.join(workdir, "text_model")


def checkpoint_dir(workdir: str) -> str:
  return files.join(workdir, "checkpoints")


def tensorboard_dir(workdir: str) -> str:
  return files.join(workdir, "tensorboard")


def eval_dir(workdir: str, name: str, step: int, retrieval: str = "exhaustive") -> str:
  """`W/eval/<name>_step<step>[_two_stage]`: name is a split ("val", "test_public") or "periodic"."""
  suffix = "" if retrieval == "exhaustive" else f"_{retrieval}"
  return files.join(workdir, "eval", f"{name}_step{step}{suffix}")


def demo_data_dir(workdir: str) -> str:
  """Where the demo's synthetic corpus is prepared (`data_prep.demo_corpus`)."""
  return files.join(workdir, "data")


def demo_prepared_dir(workdir: str) -> str:
  """The demo corpus's prepared data, under `demo_data_dir`."""
  return files.join(demo_data_dir(workdir), "prepared")
