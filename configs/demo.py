"""Demo: HAMMER on the embedded synthetic corpus, minutes on a laptop-class CPU.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo

`data.synthetic` holds the corpus's `make_synthetic_corpus` arguments; with an
empty `data.prepared_dir` the corpus is built (once) under `<workdir>/data`.
"""

from configs import base, variants


def get_config(arg: str = ""):
  c = base.get_base_config()
  c.data.source = "synthetic"
  c.data.synthetic = dict(seed=0, num_train_videos=300, num_val_videos=60, num_test_videos=60,
                          queries_per_video=5, visual_dim=128, subtitle_dim=64)
  c.data.max_frames = 48
  c.data.max_query_len = 16
  c.data.clip_len = 8
  c.data.shuffle_buffer = 128
  c.optim.batch_size = 16
  c.optim.lr = 1e-4
  c.optim.num_steps = 600
  c.eval.batch_size = 32
  c.eval.final_eval = True
  c.eval.every_steps = 200
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  return variants.apply_variants(c, arg)
