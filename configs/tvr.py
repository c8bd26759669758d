"""TVR with the paper's settings (supplement 6.1.4): batch 128, max LR 2e-4, 96 frames.

  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared
  --config=configs/tvr.py:flat          (FLAT baseline, Table 1)

Visual (ResNet-152 + I3D, 3072-d) and subtitle (768-d) streams, 1.5 s per frame.
Clip length: the paper tries 8..48 on TVR without naming the best; 16 (choice).
Training length is not given in the paper: 20k steps (~29 epochs of TVR train)
(choice). Variants: configs/variants.py.
"""

from configs import base, variants


def get_config(arg: str = ""):
  c = base.get_base_config()
  c.data.source = "tvr"
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.max_frames = 96
  c.data.max_query_len = 30
  c.data.clip_len = 16
  c.data.use_subtitles = True
  c.optim.batch_size = 128
  c.optim.lr = 2e-4
  c.optim.num_steps = 20000
  return variants.apply_variants(c, arg)
