"""One writer per `out_dir`: the lock every preparation holds while it writes.

Two runs into one folder lose data without it: the first to finish deletes the
other's build folder as an earlier build (the second then publishes a dataset
with shards missing), and a run with the same inputs shares the other's build
folder and clears shards the other has just published.

Locally the lock is `out_dir/.prepare.lock`, held with `fcntl.flock` and
naming its holder (pid, host, start time). The kernel releases a flock when its
process ends, however it ends (Ctrl-C, kill -9, a crash), so a lock file left
behind is stale by construction and the next run simply takes it: no pid
guessing. A run that finds the lock held exits with one line naming the holder.

A bucket (`gs://`, any `scheme://` out_dir) cannot lock: objects have no
exclusive create that every client honours. There the run writes the same
file as a marker, refuses to start while a marker of a live run is present
(on this host a marker whose process has ended is stale and taken over), and
prints a notice that it is the user's part to start one preparation per bucket
out_dir at a time (two runs started together can both miss each other's
marker). A marker left by a run killed on another machine is removed by hand
(the refusal says which object). The same marker protocol serves a local
filesystem without flock support (some network mounts).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import uuid
from typing import Iterator

from data_prep.records import DataError
from hammer_jax import files

LOCK_NAME = ".prepare.lock"

BUCKET_NOTICE = ("a bucket cannot be locked, so this run only marks it ({marker}); start one preparation per "
                 "--out_dir at a time (or prepare into a local folder and copy it to the bucket)")


def _holder() -> dict[str, object]:
  return {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
          "started": datetime.datetime.now().isoformat(timespec="seconds")}


def _describe(holder: dict | None) -> str:
  if not holder:
    return "a run that has not written its name yet"
  return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _parse(text: str) -> dict | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _held(out_dir: str, holder: dict | None, what_to_do: str) -> DataError:
  return DataError(out_dir, "<folder>", "out_dir",
                   f"another data_prep run is writing here ({_describe(holder)}); {what_to_do}")


@contextlib.contextmanager
def out_dir_lock(out_dir: str) -> Iterator[None]:
  """Holds `out_dir`'s writer lock for the block; DataError (one line, naming the holder) when another has it."""
  if files.has_scheme(out_dir):
    with _marker(out_dir, BUCKET_NOTICE):
      yield
    return
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise DataError(out_dir, "<folder>", "out_dir", f"cannot create it ({e.strerror or e})") from None
  fd = _flock(out_dir)
  if fd is None:  # The filesystem has no flock: the best a bucket gets.
    with _marker(out_dir, "this filesystem cannot flock, so " + BUCKET_NOTICE):
      yield
    return
  path = os.path.join(out_dir, LOCK_NAME)
  try:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode())
    yield
  finally:
    # Removed while still held: a run that opened this file meanwhile finds it unlinked and retries.
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    os.close(fd)


def _flock(out_dir: str) -> int | None:
  """An fd holding the flock of `out_dir/LOCK_NAME`, or None when the filesystem cannot flock."""
  import fcntl
  path = os.path.join(out_dir, LOCK_NAME)
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise DataError(out_dir, "<folder>", "out_dir", f"cannot create its lock file {LOCK_NAME} "
                      f"({e.strerror or e}): make the folder writable or choose another --out_dir") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _held(out_dir, _parse(text), "wait for it to finish (it holds the lock until it exits), or "
                    "choose another --out_dir") from None
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
        return None
      raise
    # The previous holder removes the file on release; holding the flock of an unlinked file locks nothing.
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)


def _alive(pid: object) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return True  # Unknown: assume it may still run.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def _marker(out_dir: str, notice: str) -> Iterator[None]:
  """Best effort where nothing locks: a marker object naming the writer (see the module docstring)."""
  marker = files.join(out_dir, LOCK_NAME)
  if files.exists(marker):
    holder = _parse(files.read_text(marker))
    if holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
      print(f"notice: {marker} was left by {_describe(holder)}, which has ended: taken over", file=sys.stderr)
    else:
      raise _held(out_dir, holder, f"{out_dir} cannot be locked, so if no run is writing there (e.g. it was "
                  f"killed on another machine), delete {marker} and run again")
  print(f"notice: {out_dir}: " + notice.format(marker=marker), file=sys.stderr)
  mine = _holder()
  files.atomic_write(marker, json.dumps(mine))
  try:
    yield
  finally:
    current = _parse(files.read_text(marker)) if files.exists(marker) else None
    if current and current.get("token") == mine["token"]:
      files.remove(marker)
