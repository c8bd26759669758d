r"""HAMMER main job: trains (and evaluates) a config in a workdir.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo
  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared --config.optim.lr=1e-4

With the demo config (the embedded default) the synthetic corpus is generated and
converted to TFRecord shards under `<workdir>/data` on the first run and reused
afterwards. Re-running with the same workdir resumes from the latest checkpoint.
On a multi-host cluster every host runs the same command (hammer_jax/startup.py,
docs/running.md).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from hammer_jax import startup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file (get_config(arg)), e.g. configs/tvr.py:flat.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder (local or gs://) for checkpoints, logs and results (and the demo's "
                    "data).", required=True)


def prepare_demo_corpus(config, workdir: str) -> None:
  """The demo's corpus: built on its first run (`data_prep.demo_corpus`), found complete afterwards."""
  import jax
  from data_prep import demo_corpus
  from hammer_jax import workdir as workdirs
  from hammer_jax.model import pretrained
  demo_corpus.ensure_synthetic_prepared(
      workdirs.demo_data_dir(workdir), synthetic=dict(config.data.synthetic),
      text_checkpoint=config.model.text_checkpoint or pretrained.DEFAULT_CHECKPOINT,
      verbose=jax.process_index() == 0)


def config_from_flags():
  """FLAGS.config; ml_collections defers a config file it could not load to the first use: one line then."""
  from hammer_jax.errors import UsageError
  try:
    FLAGS.config.get("data")
  except OSError as e:
    raise UsageError(f"--config: {' '.join(str(e).split())}") from None
  return FLAGS.config


def main(argv):
  del argv
  startup.start()
  from hammer_jax.train import loop, resume
  config = config_from_flags()
  resume.check_resumable(config, FLAGS.workdir)  # Before the demo corpus or config.json is written.
  if config.data.source == "synthetic" and not config.data.prepared_dir:
    prepare_demo_corpus(config, FLAGS.workdir)
  state = loop.train_and_evaluate(config, FLAGS.workdir)
  logging.info("Done: step %d of %d", int(state.step), config.optim.num_steps)
  startup.finish(0)


if __name__ == "__main__":
  startup.run(main)
