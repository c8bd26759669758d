"""TVR with the paper's settings (supplement 6.1.4): batch 128, max LR 2e-4, 96 frames.

  python -m hammer_jax.main --config=configs/tvr.py --workdir=W \
      --config.data.prepared_dir=data/tvr_prepared
  --config=configs/tvr.py:flat          (FLAT baseline, Table 1)

Visual (ResNet-152 + I3D, 3072-d) and subtitle (768-d) streams, 1.5 s per frame.
Clip length: the paper tries 8..48 on TVR without naming the best; 16 (choice).
Training length is not given in the paper: 20k steps (~29 epochs of TVR train)
(choice). These are configs/base.py's defaults, so this file sets nothing but the
variant. Variants: configs/variants.py.
"""

from configs import base, variants


def get_config(arg: str = ""):
  return variants.apply_variants(base.get_base_config(), arg)
