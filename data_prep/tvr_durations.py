"""The duration distribution of the real TVR train split, for TVR-shaped synthetic corpora.

`TVR_TRAIN_DURATION_PERCENTILES[p]` is the p-th percentile (p = 0..100, seconds)
of the 17,435 train durations in the TVR release's `tvr_video2dur_idx.json`
(min 2.02 s, median 77.0 s, mean 76.2 s, max 272.0 s; 0.7% are longer than the
144 s that 96 frames of 1.5 s cover). Computed with
`numpy.percentile(durations, range(101))`, rounded to 0.01 s; a test recomputes
it from the real file. Embedded so that `data_prep.make_synthetic
--durations=tvr` (and benchmarks/tvr_shaped_benchmark.py) need no download.
"""

from __future__ import annotations

import numpy as np

TVR_TRAIN_DURATION_PERCENTILES = (
    2.02, 43.02, 49.09, 53.02, 55.02, 56.02, 56.69, 57.02, 57.56, 58.03, 58.03, 58.22, 58.63, 59.03, 59.03,
    59.03, 59.05, 59.27, 59.57, 59.94, 60.03, 60.03, 60.03, 60.03, 60.1, 60.3, 60.49, 60.72, 61.03, 61.03,
    61.03, 61.04, 61.05, 61.25, 61.48, 61.76, 62.03, 62.03, 62.04, 62.14, 62.57, 63.03, 63.03, 63.04, 64.02,
    64.03, 65.03, 66.03, 69.02, 72.59, 77.02, 80.1, 82.78, 84.1, 85.38, 86.28, 87.02, 87.56, 88.02, 88.02,
    88.35, 88.78, 89.02, 89.02, 89.06, 89.28, 89.49, 89.72, 90.02, 90.02, 90.02, 90.02, 90.05, 90.18, 90.33,
    90.47, 90.64, 90.81, 91.03, 91.03, 91.03, 91.03, 91.22, 91.44, 91.73, 92.03, 92.03, 92.03, 92.31, 92.92,
    93.03, 93.03, 94.03, 94.25, 95.03, 97.03, 99.03, 103.02, 114.02, 131.34, 272.02)


def tvr_duration(u: float) -> float:
  """The TVR train duration at quantile `u` in [0, 1] (linear between percentiles), seconds."""
  return float(np.interp(100.0 * u, np.arange(101), TVR_TRAIN_DURATION_PERCENTILES))
