"""Writing a file whole or not at all: the one atomic-write rule of the project.

A reader (a restarted job, a concurrent searcher, the next command) must never
see half a file: a killed run, a full disk or a crash leaves either the previous
file or the complete new one. Locally that is a temporary file in the same
folder, flushed and synced, then `os.replace` (atomic on POSIX); a leftover
temporary file is hidden (`.name.tmp-PID`) and harmless.
"""

from __future__ import annotations

import os
from typing import Callable


def temporary_path(path: str) -> str:
  """A hidden sibling of `path` unique to this process (same folder, so the rename is atomic)."""
  folder, name = os.path.split(path)
  return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
  """`write(tmp_path)` creates the file's content at a temporary path, which then replaces `path`.

  For writers that want a file name (h5py, numpy); `atomic_write` covers text and bytes.
  The folder is created if needed. On any error the temporary file is removed and
  `path` is left as it was.
  """
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  tmp = temporary_path(path)
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `data` (str as UTF-8, or bytes) to `path` atomically."""
  payload = data.encode("utf-8") if isinstance(data, str) else data

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(payload)

  atomic_write_with(path, write)
