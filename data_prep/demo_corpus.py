"""The embedded default corpus: synthetic data in the TVR layout, prepared once.

`python -m hammer_jax.main --config=configs/demo.py` needs no downloaded data:
on its first run it generates the synthetic corpus (`data_prep.make_synthetic`)
and converts it with the same TVR converter real data goes through
(`data_prep.tvr`). Both steps are skipped when their outputs are already
complete, so re-running the demo reuses what was built. Only the training binary
calls this; evaluation and search open the prepared folder and say what is
missing instead (`hammer_jax.run_config.open_data`).
"""

from __future__ import annotations

import os
from typing import Any

from data_prep import make_synthetic, tvr
from data_prep.prepared_writer import format_summary
from data_prep.records import DataError
from hammer_jax import files
from hammer_jax.data import prepared_data


def ensure_synthetic_prepared(root: str, *, synthetic: dict[str, Any] | None = None,
                              text_checkpoint: str = "minilm", videos_per_shard: int = 64,
                              verbose: bool = True) -> prepared_data.PreparedData:
  """Builds (or reuses) `<root>/raw` (TVR layout) and `<root>/prepared` (shards).

  Args:
    root: folder for the corpus, e.g. `<workdir>/data`.
    synthetic: keyword arguments of `make_synthetic_corpus` (sizes, widths, seed).
    text_checkpoint: BERT folder or alias whose tokenizer tokenises the queries.
  """
  if files.has_scheme(root):
    raise DataError(root, "<folder>", "workdir", "the demo builds its corpus with local tools (h5py feature files): "
                    "run it with a local --workdir, or prepare data with data_prep and point "
                    "--config.data.prepared_dir at it (a gs:// folder works)")
  raw = os.path.join(root, "raw")
  prepared = os.path.join(root, "prepared")
  make_synthetic.make_synthetic_corpus(raw, verbose=verbose, **(synthetic or {}))
  # Resumable: finished shards of an identical earlier build are kept, not rewritten.
  manifest = tvr.prepare_tvr(
      prepared, annotation_dir=raw, video_feature=[os.path.join(raw, "video_feature.h5")],
      subtitle_feature=os.path.join(raw, "sub_feature.h5"),
      video2dur_idx=os.path.join(raw, "tvr_video2dur_idx.json"),
      text_checkpoint=text_checkpoint, videos_per_shard=videos_per_shard)
  if verbose:
    print(format_summary(manifest))
  return prepared_data.open_prepared(prepared)
