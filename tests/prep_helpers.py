"""What the data-preparation tests share: one-line error checks, tiny ActivityNet runs, crashes on cue.

TVR inputs are `helpers.TvrInputs`; ActivityNet inputs are `AnetInputs` (a
`val_1.json`-style file per split and one h5 of 4-wide features, one row per
second).
"""

from __future__ import annotations

import os

import helpers as dh
from data_prep import activitynet, cli, features
from data_prep.records import DataError


def assert_one_line(message: str, *parts) -> None:
  assert message and "\n" not in message and "\r" not in message, repr(message)
  for p in parts:
    assert str(p) in message, (p, message)


def assert_data_error(exc_info, path: str, record: str, field: str, *more) -> DataError:
  """The DataError names the file, the record and the field, on one line."""
  e = exc_info.value
  assert isinstance(e, DataError)
  assert_one_line(str(e), path, record, f"'{field}'", *more)
  assert e.path == path and record in e.record and e.field == field, (e.path, e.record, e.field)
  return e


def no_manifest(out: str) -> bool:
  return not os.path.exists(os.path.join(out, "prepared.json"))


def tree_bytes(root: str) -> dict[str, bytes]:
  """Every file of the dataset prepared.json describes: the manifest and its data folder."""
  out = {"prepared.json": open(os.path.join(root, "prepared.json"), "rb").read()}
  data = dh.data_folder(root)
  for folder, _, names in os.walk(data):
    for n in names:
      path = os.path.join(folder, n)
      out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def stat(path: str):
  st = os.stat(path)
  return st.st_ino, st.st_mtime_ns


def dataset_files(out: str) -> list[str]:
  root = dh.data_folder(out)
  return sorted(f"{d}/1.0.0/{f}" for d in ("videos", "queries")
                for f in os.listdir(os.path.join(root, d, "1.0.0")))


class SimulatedCrash(Exception):
  pass


def on_read(monkeypatch, source: str, after: int, action) -> None:
  """Calls `action(name)` at the (after+1)-th video feature read of `source` ("tvr" or "activitynet")
  and every later one, before the read; a raising action stops the run there."""
  cls = features.VisualFeatures if source == "tvr" else features.FeatureFile
  real_read = cls.read
  calls = {"n": 0}

  def read(self, name):
    if cls is features.FeatureFile and self.field != "video":
      return real_read(self, name)
    calls["n"] += 1
    if calls["n"] > after:
      action(name)
    return real_read(self, name)

  monkeypatch.setattr(cls, "read", read)


def crash_after(monkeypatch, n_reads: int, source: str = "tvr", exc=SimulatedCrash) -> None:
  def crash(name):
    raise exc(f"killed while reading {name}")
  on_read(monkeypatch, source, n_reads, crash)


def run_cli(prepare, out_dir: str) -> str:
  """`data_prep.cli.run` (what `python -m data_prep.<source>` runs) on `prepare`; its one `error:` line."""
  class Flags:
    pass
  f = Flags()
  f.out_dir = out_dir
  try:
    cli.run(lambda _: prepare(), f)
  except SystemExit as e:
    message = str(e.code)
    assert_one_line(message, "error: ")
    assert message.startswith("error: ")
    return message
  raise AssertionError("the run did not fail")


class AnetInputs:
  """ActivityNet Captions files in `root`: `<split>.json` per split (disjoint videos) and `i3d.h5`."""

  DIM = 4

  def __init__(self, root: str, splits=("val_1",), n_videos: int = 3):
    os.makedirs(root, exist_ok=True)
    self.root = root
    self.ann = {}
    for k, split in enumerate(splits):
      ann = dh.anet_annotations(n_videos + k)
      self.ann[split] = {f"{vid}_{split}": rec for vid, rec in ann.items()}
    self.feats = {v: f for ann in self.ann.values() for v, f in dh.anet_features(ann, self.DIM).items()}
    self.paths = {split: os.path.join(root, f"{split}.json") for split in splits}
    self.h5 = os.path.join(root, "i3d.h5")
    self.write()

  def write(self) -> "AnetInputs":
    for split, ann in self.ann.items():
      dh.write_json(self.paths[split], ann)
    dh.write_h5(self.h5, self.feats)
    return self

  def prepare(self, out: str, **kw):
    kw.setdefault("max_frames", 8)
    kw.setdefault("split_files", dict(self.paths))
    return activitynet.prepare_activitynet(out, video_feature=self.h5, **kw)
