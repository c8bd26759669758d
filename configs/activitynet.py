"""ActivityNet Captions with the paper's settings (supplement 6.1.4).

Batch 64, max LR 4e-5, 128 frames (resampled at preparation), clip length 32
(Table 7's best), visual stream only, evaluated on val_1.

  python -m hammer_jax.main --config=configs/activitynet.py --workdir=W \
      --config.data.prepared_dir=data/anet_prepared
  --config=configs/activitynet.py:clip=16          (a Table 7 row)

Training length is not given in the paper: 20k steps (~34 epochs) (choice).
Everything else is configs/base.py's. Variants: configs/variants.py.
"""

from configs import base, variants


def get_config(arg: str = ""):
  c = base.get_base_config()
  c.data.source = "activitynet"
  c.data.train_split, c.data.eval_split = "train", "val_1"
  c.data.max_frames = 128
  c.data.clip_len = 32
  c.data.use_subtitles = False
  c.optim.batch_size = 64
  c.optim.lr = 4e-5
  return variants.apply_variants(c, arg)
