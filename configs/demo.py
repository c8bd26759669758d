"""Demo: HAMMER on the embedded synthetic corpus, about 10 minutes on a 2-core CPU.

  python -m hammer_jax.main --config=configs/demo.py --workdir=/tmp/hammer_demo

`data.synthetic` holds the corpus's `make_synthetic_corpus` arguments; with an
empty `data.prepared_dir` the corpus is built (once) under `<workdir>/data`.
Synthetic videos last at most 60 s = 40 rows, so 48 frames cut nothing off.
The step budget is sized for the run time (a MiniLM training step takes about
3-4 s on a 2-core CPU, BENCHMARKS.md), not for convergence.
"""

from configs import base, variants


def get_config(arg: str = ""):
  c = base.get_base_config()
  c.data.source = "synthetic"
  c.data.synthetic = dict(seed=0, num_train_videos=300, num_val_videos=60, num_test_videos=60,
                          queries_per_video=5, visual_dim=128, subtitle_dim=64, min_duration=15.0,
                          max_duration=60.0)
  c.data.max_frames = 48
  c.data.max_query_len = 16
  c.data.clip_len = 8
  c.data.shuffle_buffer = 128
  c.optim.batch_size = 16
  c.optim.lr = 1e-4
  c.optim.num_steps = 120
  c.eval.batch_size = 32
  c.eval.final_eval = True
  c.eval.top_k_videos = 10
  c.eval.every_steps = 60
  c.eval.max_queries_during_training = 40
  c.log_every_steps = 10
  c.checkpoint_every_steps = 60
  return variants.apply_variants(c, arg)
