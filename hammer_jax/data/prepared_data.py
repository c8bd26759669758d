"""Opening prepared data (written by `data_prep`) and checking it fits the run.

Training, evaluation and search all start here: the manifest (`prepared.json`)
says what the data holds (source, feature widths, vocabulary, splits); the two
TFDS datasets hold the records. A folder that was never prepared, a split that
is missing, or a vocabulary other than the model's is a one-line error that says
what to run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from hammer_jax import files

# Version folder of the two TFDS datasets (`videos/<version>`, `queries/<version>`); data_prep writes it.
DATASET_VERSION = "1.0.0"
PREPARE_HINT = ("run `python -m data_prep.make_synthetic` + `python -m data_prep.tvr`, "
                "`python -m data_prep.activitynet`, or `python -m data_prep.corpus` for features without queries "
                "(see README)")


class PreparedDataError(ValueError):
  """Prepared data is missing or does not fit the configuration (one line)."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A prepared corpus: its folder and manifest."""
  path: str
  manifest: dict[str, Any]

  @property
  def source(self) -> str:
    return self.manifest["source"]

  @property
  def video_dim(self) -> int:
    return int(self.manifest["video_dim"])

  @property
  def subtitle_dim(self) -> int:
    return int(self.manifest["subtitle_dim"])

  def split(self, name: str) -> dict[str, Any]:
    """The manifest entry of one split; an error naming what to run when absent."""
    splits = self.manifest["splits"]
    if name not in splits:
      hint = (f"use one of: {', '.join(sorted(splits))}, or prepare '{name}' with "
              f"`python -m data_prep.{self.manifest.get('source', 'tvr')}`"
              if splits else PREPARE_HINT)
      raise PreparedDataError(f"{self.path}: split '{name}' was never prepared; {hint}")
    return splits[name]

  def builder(self, dataset: str):
    """The TFDS builder of `videos` or `queries`."""
    import tensorflow_datasets as tfds
    folder = os.path.join(self.path, self.manifest.get("data_folder", ""), dataset, DATASET_VERSION)
    return tfds.builder_from_directory(files.native(folder))

  @property
  def has_queries(self) -> bool:
    """False for a corpus prepared without queries (`data_prep.corpus`): no vocabulary, no token ids."""
    return self.manifest.get("vocab_sha256") is not None

  def check_vocabulary(self, vocab_sha256: str | None, checkpoint: str = "") -> None:
    """Refuses data tokenised with another vocabulary than the model's.

    A corpus without queries has no token ids to disagree with any model: accepted.
    """
    if not self.has_queries:
      return
    if vocab_sha256 is not None and vocab_sha256 != self.manifest["vocab_sha256"]:
      raise PreparedDataError(
          f"{self.path}: queries were tokenised with vocabulary {self.manifest['vocab_sha256'][:12]} "
          f"({self.manifest.get('text_checkpoint', '?')}) but the model uses {vocab_sha256[:12]} ({checkpoint}); "
          "prepare the data again with --text_checkpoint set to the model's checkpoint")

  def check_feature_dims(self, video_dim: int, subtitle_dim: int, model: str = "") -> None:
    """Refuses features of other widths than the model's (one line: this corpus, both widths, the model).

    `model` names the model (e.g. its training data's folder); same widths do not
    mean the same features (docs/own_videos.md), but other widths cannot work.
    """
    if (video_dim, subtitle_dim) == (self.video_dim, self.subtitle_dim):
      return
    of = f" ({model})" if model else ""
    hint = ""
    if self.source == "corpus" and self.video_dim == video_dim and not self.subtitle_dim:
      hint = (f"; prepare the corpus again with --subtitle_dim={subtitle_dim} (zero subtitle rows, as for videos "
              "without subtitles) or --subtitle_features of that width")
    elif self.source == "corpus" and self.video_dim != video_dim:
      hint = ("; extract the corpus's features the way the model's training features were extracted "
              "(docs/own_videos.md)")
    raise PreparedDataError(
        f"{self.path}: features are video {self.video_dim} / subtitle {self.subtitle_dim} wide but the "
        f"model{of} expects video {video_dim} / subtitle {subtitle_dim}{hint}")


def open_prepared(path: str) -> PreparedData:
  """Opens a prepared-data folder (the `--out_dir` of a data_prep command)."""
  if not path:
    raise PreparedDataError(f"no prepared data folder configured (config.data.prepared_dir); {PREPARE_HINT}")
  manifest_path = os.path.join(path, "prepared.json")
  if not files.exists(manifest_path):
    raise PreparedDataError(f"{path}: no prepared.json (not prepared, or preparation did not finish); {PREPARE_HINT}")
  return PreparedData(files.absolute(path), json.loads(files.read_text(manifest_path)))


@dataclasses.dataclass
class QueryTable:
  """Every query of a split, in memory (small: TVR val is 10,895 queries).

  Arrays are `[num_queries]`; `token_ids` is a list of int32 arrays.
  """
  desc_id: np.ndarray
  desc: list[str]
  type: list[str]
  vid_name: list[str]
  video_index: np.ndarray
  st: np.ndarray
  ed: np.ndarray
  duration: np.ndarray
  token_ids: list[np.ndarray]

  def __len__(self) -> int:
    return len(self.desc_id)


def read_queries(data: PreparedData, split: str) -> QueryTable:
  """Reads the split's `queries` records in their stored order (none for a corpus without queries)."""
  if not data.split(split).get("num_queries", 1):
    return _query_table({k: [] for k in QueryTable.__dataclass_fields__})  # TFDS refuses to read an empty split.
  import tensorflow_datasets as tfds
  # One shard at a time: TFDS interleaves shards even without shuffling.
  ds = data.builder("queries").as_dataset(split=split, shuffle_files=False,
                                          read_config=tfds.ReadConfig(interleave_cycle_length=1))
  cols: dict[str, list] = {k: [] for k in QueryTable.__dataclass_fields__}
  for rec in ds.as_numpy_iterator():
    for k in cols:
      v = rec[k]
      cols[k].append(v.decode("utf-8") if isinstance(v, bytes) else v)
  return _query_table(cols)


def _query_table(cols: dict[str, list]) -> QueryTable:
  return QueryTable(
      desc_id=np.asarray(cols["desc_id"], np.int64), desc=cols["desc"], type=cols["type"],
      vid_name=cols["vid_name"], video_index=np.asarray(cols["video_index"], np.int64),
      st=np.asarray(cols["st"], np.float32), ed=np.asarray(cols["ed"], np.float32),
      duration=np.asarray(cols["duration"], np.float32),
      token_ids=[np.asarray(t, np.int32) for t in cols["token_ids"]])
