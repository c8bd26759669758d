"""Pre-extracted feature files: h5 (`vid_name -> [rows, dim]`) or a folder of `<vid_name>.npy`
(or `.npz`: its one array, or the one named `features`).

Shapes are checked up front from metadata (missing videos, zero rows, a width
that differs from the others) so a bad file fails before any shard is written;
values (NaN/Inf) are checked as each video is read. Every failure is a one-line
`DataError` naming the file, the video and the field.
"""

from __future__ import annotations

import os
import types
import zipfile
from typing import Sequence

import h5py
import numpy as np

from data_prep.records import DataError


class FeatureFile:
  """Read-only view of one feature source: an h5 file or a folder of `<vid>.npy` / `<vid>.npz`."""

  def __init__(self, path: str, field: str):
    self.path, self.field = path, field
    if os.path.isdir(path):
      self._h5 = None
      self._files = _folder_files(path, field)
    elif os.path.isfile(path):
      try:
        self._h5 = h5py.File(path, "r")
      except OSError as e:
        raise DataError(path, "<file>", field, f"cannot open as h5 ({e})") from None
      self._files = None
    else:
      raise DataError(path, "<file>", field, "feature file or folder does not exist")

  def __contains__(self, name: str) -> bool:
    return name in self._h5 if self._h5 is not None else name in self._files

  def names(self) -> list[str]:
    """Every entry's name, sorted: the h5 file's top-level keys, or the folder's file names without suffix."""
    return sorted(self._h5.keys() if self._h5 is not None else self._files)

  def file_paths(self) -> list[str]:
    """The files holding the features (the h5 file, or every per-video file of the folder)."""
    if self._h5 is not None:
      return [self.path]
    return [os.path.join(self.path, f) for _, f in sorted(self._files.items())]

  def _meta(self, name: str):
    if self._h5 is not None:
      node = self._h5[name]
      if not isinstance(node, h5py.Dataset):  # e.g. one group per video with datasets inside
        raise DataError(self.path, f"video {name}", self.field,
                        f"is an h5 {type(node).__name__}, expected a [rows, dim] dataset (docs/getting_data.md "
                        "shows how to convert)")
      return node
    file = os.path.join(self.path, self._files[name])
    try:
      if file.endswith(".npz"):
        return _npz_header(file, name, self.field)
      return np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(file, f"video {name}", self.field,
                      f"cannot read as {file[-4:]} ({e})") from None

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._meta(name).shape)

  def check_numeric(self, name: str) -> None:
    """Refuses a dataset that does not hold numbers (strings, objects, compound types)."""
    dtype = self._meta(name).dtype
    if dtype.kind not in "fiub":
      raise DataError(self.path, f"video {name}", self.field, f"holds {dtype} values, not numbers")

  def read(self, name: str) -> np.ndarray:
    """float32 `[rows, dim]` (or `[rows]` for masks), NaN/Inf rejected."""
    if name not in self:
      raise DataError(self.path, f"video {name}", self.field, "video missing from the feature file")
    if self._h5 is not None:
      arr = np.asarray(self._h5[name], dtype=np.float32)
    else:
      file = os.path.join(self.path, self._files[name])
      try:
        if file.endswith(".npz"):
          with np.load(file) as z:
            arr = z[_npz_key(z.files, file, name, self.field)]
        else:
          arr = np.load(file)
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(file, f"video {name}", self.field, f"cannot read as {file[-4:]} ({e})") from None
      arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
      bad = int(np.argwhere(~np.isfinite(arr))[0][0])
      raise DataError(self.path, f"video {name}", self.field, f"NaN or Inf in features (row {bad})")
    return arr

  def close(self):
    if self._h5 is not None:
      self._h5.close()


FOLDER_SUFFIXES = (".npy", ".npz")


def _folder_files(folder: str, field: str) -> dict[str, str]:
  """{video name: file name} of a folder's `.npy` / `.npz` files; a name with both is refused."""
  out: dict[str, str] = {}
  for f in sorted(os.listdir(folder)):
    if not f.endswith(FOLDER_SUFFIXES):
      continue
    name = f[:-4]
    if name in out:
      raise DataError(os.path.join(folder, f), f"video {name}", field,
                      f"both {out[name]} and {f} are in the folder: keep one file per video")
    out[name] = f
  return out


def _npz_key(keys, file: str, name: str, field: str) -> str:
  """The array of a `.npz` that holds the video's features: its only one, or the one named `features`."""
  if len(keys) == 1:
    return keys[0]
  if "features" in keys:
    return "features"
  raise DataError(file, f"video {name}", field, f"holds arrays {', '.join(sorted(keys)) or '(none)'}: expected "
                  "one array, or one named 'features'")


def _npz_header(file: str, name: str, field: str):
  """Shape and dtype of the features of a `.npz`, from the array's header (the values are not read)."""
  with zipfile.ZipFile(file) as z:
    members = {m[:-4]: m for m in z.namelist() if m.endswith(".npy")}
    with z.open(members[_npz_key(list(members), file, name, field)]) as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
      else:  # Other header versions: read the array itself.
        with np.load(file) as loaded:
          arr = loaded[_npz_key(loaded.files, file, name, field)]
        shape, dtype = arr.shape, arr.dtype
  return types.SimpleNamespace(shape=tuple(shape), dtype=np.dtype(dtype))


def check_videos(source: FeatureFile, names: Sequence[str], *, expected_dim: int | None = None) -> int:
  """Checks presence, non-empty rows and a common width; returns the width.

  Raises DataError on the first video that is missing, has zero rows or a width
  different from the others.
  """
  dim = expected_dim
  first = None
  for name in names:
    if name not in source:
      raise DataError(source.path, f"video {name}", source.field, "video missing from the feature file")
    source.check_numeric(name)
    shape = source.shape(name)
    if len(shape) != 2:
      raise DataError(source.path, f"video {name}", source.field, f"expected [rows, dim], got shape {shape}")
    if shape[0] == 0:
      raise DataError(source.path, f"video {name}", source.field, "video has zero frames")
    if dim is None:
      dim, first = shape[1], name
    elif shape[1] != dim:
      ref = f"video {first}" if first else "the other files"
      raise DataError(source.path, f"video {name}", source.field,
                      f"feature width {shape[1]} differs from {dim} of {ref}")
  return int(dim or 0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Row-wise L2 normalisation, as TVR's released features are used."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class VisualFeatures:
  """Visual features of a video: one file, or several concatenated row-wise.

  TVR ships either the concatenated ResNet-152 + I3D file (3072-d) or the two
  files separately (2048-d and 1024-d); separate files can be L2-normalised
  before concatenation. When the files disagree on the row count, the common
  prefix is kept (the caller counts it as a repair).
  """

  def __init__(self, paths: Sequence[str], *, normalize: bool = False):
    self.files = [FeatureFile(p, "video") for p in paths]
    self.normalize = normalize

  def check(self, names: Sequence[str]) -> int:
    return sum(check_videos(f, names) for f in self.files)

  def rows(self, name: str) -> int:
    """Feature rows of a video (the common prefix of several files)."""
    return min(f.shape(name)[0] for f in self.files)

  def read(self, name: str) -> tuple[np.ndarray, bool]:
    """Returns (`[rows, dim]` features, whether rows had to be truncated to agree)."""
    parts = [f.read(name) for f in self.files]
    if self.normalize:
      parts = [l2_normalize(p) for p in parts]
    rows = min(p.shape[0] for p in parts)
    truncated = any(p.shape[0] != rows for p in parts)
    return np.concatenate([p[:rows] for p in parts], axis=-1), truncated

  def close(self):
    for f in self.files:
      f.close()


class SubtitleFeatures:
  """TVR subtitle features: `vid -> [rows, 768]` and `vid + "-mask" -> [rows]`.

  A video absent from the file gets zeros and mask 0, as the paper does; the
  caller counts it.
  """

  def __init__(self, path: str):
    self.file = FeatureFile(path, "subtitle")

  def check(self, names: Sequence[str]) -> int:
    present = [n for n in names if n in self.file]
    if not present:
      raise DataError(self.file.path, "<file>", "subtitle", "no video of the split is in the subtitle file")
    dim = check_videos(self.file, present)
    for name in present:
      mask_key = name + "-mask"
      if mask_key in self.file:
        self.file.check_numeric(mask_key)
        _check_mask_shape(self.file.path, name, self.file.shape(mask_key), self.file.shape(name)[0])
    return dim

  def read(self, name: str, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Returns (`[rows, dim]` features, `[rows]` int32 mask, repair reason or None)."""
    if name not in self.file:
      return np.zeros((rows, dim), np.float32), np.zeros((rows,), np.int32), "video without subtitles: zeros"
    feats = self.file.read(name)
    mask_key = name + "-mask"
    if mask_key in self.file:
      mask = self.file.read(mask_key)
      _check_mask_shape(self.file.path, name, mask.shape, feats.shape[0])
      mask = mask.reshape(-1)
    else:
      mask = (np.abs(feats).sum(-1) > 0).astype(np.float32)
    reason = None
    if feats.shape[0] != rows:
      reason = "subtitle rows differ from video rows: cut or zero-padded"
      out = np.zeros((rows, dim), np.float32)
      out_mask = np.zeros((rows,), np.float32)
      n = min(rows, feats.shape[0])
      out[:n], out_mask[:n] = feats[:n], mask[:n]
      feats, mask = out, out_mask
    return feats, (mask > 0).astype(np.int32), reason

  def close(self):
    self.file.close()


def _check_mask_shape(path: str, name: str, shape: tuple[int, ...], rows: int) -> None:
  """A subtitle mask is [rows] (or [rows, 1]) for features of `rows` rows."""
  if tuple(shape) not in ((rows,), (rows, 1)):
    raise DataError(path, f"video {name}", "subtitle-mask",
                    f"mask has shape {tuple(shape)}, expected ({rows},) for the {rows} feature rows")


def average_pool_rows(x: np.ndarray, max_rows: int) -> np.ndarray:
  """Resamples `[T, dim]` to `[min(T, max_rows), dim]` by averaging equal groups of rows.

  Group j covers rows `[floor(j*T/N), floor((j+1)*T/N))`, so every row is used
  once and each output row spans (close to) `T/N` input rows; the output row
  therefore covers `duration / N` seconds.
  """
  t = x.shape[0]
  if t <= max_rows:
    return x
  edges = (np.arange(max_rows + 1) * t) // max_rows
  sums = np.add.reduceat(x, edges[:-1], axis=0)
  return (sums / np.diff(edges)[:, None]).astype(np.float32)
