"""The files of a job, local or in a cloud bucket (`gs://`), through one path abstraction.

Every path a job reads or writes (prepared data, workdirs, checkpoints,
TensorBoard logs, predictions, search indices) goes through this module, never
through `open` / `os.path`: `etils.epath` (what Orbax and TFDS use) handles local
paths and `gs://` (with TensorFlow installed, through `tf.io.gfile`). Libraries
that take a path themselves (tf.data, TensorBoard writers, TFDS, Orbax) get
`native(p)`. Inputs of data preparation that only local readers can open (h5
feature files, tokenizer folders) stay local paths.

Writing a file whole or not at all is the one atomic-write rule of the project:
a reader (a restarted job, a concurrent searcher, the next command) never sees
half a file. Locally: a hidden temporary file in the same folder, flushed and
synced, then `os.replace` (atomic on POSIX). In a bucket an object appears only
once its upload is complete, so the content is written locally and uploaded
whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from etils import epath

REMOTE_PREFIXES = ("gs://", "s3://")


def path(p) -> epath.Path:
  """The epath of `p` (a str, os.PathLike or epath)."""
  return epath.Path(p)


def native(p) -> str:
  """`p` as the libraries that open paths themselves want it (tf.data, TensorBoard, TFDS, Orbax).

  A local path, or the URI itself (`gs://...`): those libraries speak to the
  bucket through their own clients, and code that would `open` it fails here as
  it would on a real bucket.
  """
  return str(p) if has_scheme(p) else os.fspath(path(p))


def is_remote(p) -> bool:
  """A bucket path (no rename, no partial files: objects appear whole)."""
  return str(p).startswith(REMOTE_PREFIXES)


def has_scheme(p) -> bool:
  """`scheme://...` (a bucket or any other filesystem epath knows), not a local path."""
  return "://" in str(p)


def absolute(p) -> str:
  """An absolute form of `p` that names the same file from any working directory."""
  return str(p) if has_scheme(p) else os.path.abspath(p)


def join(p, *parts: str) -> str:
  return str(path(p).joinpath(*parts))


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def isfile(p) -> bool:
  return path(p).is_file()


def makedirs(p) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p) -> list[str]:
  """Names in folder `p` (sorted); [] when it does not exist."""
  q = path(p)
  return sorted(c.name for c in q.iterdir()) if q.exists() else []


def read_text(p) -> str:
  return path(p).read_text(encoding="utf-8")


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def size(p) -> int:
  """Bytes of file `p`."""
  return int(path(p).stat().length)


def remove(p) -> None:
  """Deletes a file (nothing when it is already gone)."""
  q = path(p)
  if q.exists():
    q.unlink()


def rmtree(p) -> None:
  """Deletes a folder and everything in it (nothing when it is already gone)."""
  q = path(p)
  if q.exists():
    q.rmtree()


def temporary_path(p: str) -> str:
  """A hidden sibling of local file `p` unique to this process (same folder: the rename is atomic)."""
  folder, name = os.path.split(native(p))
  return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def atomic_write_with(p, write: Callable[[str], None]) -> None:
  """`write(local_tmp)` creates the content at a local temporary path, which then becomes `p` whole.

  For writers that want a local file name (h5py, numpy, TFRecordWriter,
  matplotlib); `atomic_write` covers text and bytes. The folder is created if
  needed. On any error the temporary file is removed and `p` is left as it was.
  """
  makedirs(path(p).parent)
  if is_remote(p):
    handle, tmp = tempfile.mkstemp(prefix=".hammer_jax-upload-")
    os.close(handle)
  else:
    tmp = temporary_path(p)
  try:
    write(tmp)
    if is_remote(p):
      copy_file(tmp, p)  # An object appears only once its upload is complete.
    else:
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
      os.replace(tmp, native(p))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(p, data: str | bytes) -> None:
  """Writes `data` (str as UTF-8, or bytes) to `p` atomically."""
  payload = data.encode("utf-8") if isinstance(data, str) else data

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(payload)

  atomic_write_with(p, write)


def atomic_write_npz(p, arrays: dict) -> None:
  """`np.savez` of `arrays` to `p`, written whole or not at all (indices, caches, shards)."""
  import numpy as np

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)

  atomic_write_with(p, write)


def copy_file(src, dst) -> None:
  """Streams file `src` to `dst`, each through its own filesystem (local, bucket or another scheme)."""
  with path(src).open("rb") as reader, path(dst).open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)


def download(p, write_to: Callable[[str], object]):
  """Calls `write_to(local_path)` with `p` itself when local, else with a local copy of it.

  For readers that need a local file (numpy's npz, h5py).
  """
  if not is_remote(p):
    return write_to(native(p))
  handle, tmp = tempfile.mkstemp(prefix=".hammer_jax-download-")
  os.close(handle)
  try:
    copy_file(p, tmp)
    return write_to(tmp)
  finally:
    os.remove(tmp)


def tensorstore_kvstore(p) -> dict:
  """The TensorStore key-value store spec of folder `p` (a local folder, `file://`, `gs://` or `s3://`).

  For stores read by key from anywhere (TensorStore speaks to the bucket
  itself, with ranged reads; nothing is downloaded whole).
  """
  text = str(p)
  scheme, sep, rest = text.partition("://")
  if not sep:
    return {"driver": "file", "path": os.path.abspath(text) + "/"}
  if scheme == "file":
    return {"driver": "file", "path": "/" + rest.lstrip("/") + "/"}
  if scheme in ("gs", "s3"):
    bucket, _, key = rest.partition("/")
    return {"driver": "gcs" if scheme == "gs" else "s3", "bucket": bucket, "path": key.rstrip("/") + "/"}
  raise ValueError(f"{text}: TensorStore cannot open a {scheme}:// folder (local, file://, gs:// or s3://)")


def copytree(src, dst) -> None:
  """Copies folder `src` into `dst` (e.g. a prepared dataset up to a bucket)."""
  src_path = path(src)
  for folder, _, names in src_path.walk():
    rel = os.path.relpath(os.fspath(folder), os.fspath(src_path))
    target = path(dst) if rel == "." else path(dst).joinpath(rel)
    makedirs(target)
    for name in names:
      copy_file(folder.joinpath(name), target.joinpath(name))


__all__ = ["path", "native", "is_remote", "has_scheme", "absolute", "join", "exists", "isdir", "isfile", "makedirs", "listdir", "read_text",
           "read_bytes", "remove", "rmtree", "temporary_path", "atomic_write_with", "atomic_write", "atomic_write_npz", "download",
           "copy_file", "copytree", "tensorstore_kvstore"]
