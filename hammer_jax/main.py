r"""HAMMER main job.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo
  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared

With the demo config (the embedded default) the synthetic corpus is generated and
converted to TFRecord shards under `<workdir>/data` on the first run and reused
afterwards. The job prints what the data holds.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from hammer_jax import demo_data, prepared_data

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file (get_config(arg)), e.g. configs/tvr.py:flat.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for data (demo), checkpoints, logs and results.", required=True)


def open_data(config, workdir: str) -> prepared_data.PreparedData:
  """The configured prepared data; the demo builds its synthetic corpus on first use."""
  if config.data.source == "synthetic" and not config.data.prepared_dir:
    return demo_data.ensure_synthetic_prepared(
        os.path.join(workdir, "data"), synthetic=dict(config.data.synthetic),
        text_checkpoint=config.model.text_checkpoint or "minilm")
  return prepared_data.open_prepared(config.data.prepared_dir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  os.makedirs(FLAGS.workdir, exist_ok=True)
  try:
    data = open_data(config, FLAGS.workdir)
  except prepared_data.PreparedDataError as e:
    raise SystemExit(f"error: {e}")
  print(f"Data ready in {data.path}: {data.source}, video {data.video_dim}-d, "
        f"subtitle {data.subtitle_dim}-d, splits: "
        + ", ".join(f"{s} ({i['num_videos']} videos, {i['num_queries']} queries)"
                    for s, i in data.manifest["splits"].items()))


if __name__ == "__main__":
  app.run(main)
