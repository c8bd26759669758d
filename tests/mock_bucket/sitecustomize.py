"""A stand-in bucket for tests: `mockgs://...` paths, served from a local folder, in any Python process.

Put this folder on PYTHONPATH and set MOCK_BUCKET_ROOT: every process then
registers the `mockgs://` scheme with etils.epath (the way epath registers
`gs://`), so hammer_jax.files handles `mockgs://bucket/x` like a bucket (no
renames, whole uploads) while its objects live under MOCK_BUCKET_ROOT/bucket/x.

The local folder is never handed out: `files.native` gives libraries the
`mockgs://` URI, as it gives them `gs://` ones. The libraries a job hands paths
to get the stand-in of their own bucket client, and only they: TF's file
system for tf.data / TFDS record readers and TensorBoard writers (the readers'
file names are mapped inside the graph, as TF's GCS plugin maps `gs://`), and
TensorStore for Orbax and the parts store (a `file` key-value store where they
would use the `gcs` driver). A Python audit hook makes any `open` or `os` call
that receives a `mockgs://` string fail, and `os.path` sees no such file: code
that treats a job path as a local one (`open`, `np.save`, `h5py`, `os.path`)
fails here as it would on `gs://`.
"""

import os
import sys

ROOT = os.environ.get("MOCK_BUCKET_ROOT")
SCHEME = "mockgs://"


def _register():
  from etils import epath
  from etils.epath import gpath

  @epath.register_path_cls(SCHEME)
  class MockBucketPath(gpath.PosixGPath):  # pylint: disable=unused-variable
    """mockgs://bucket/a -> ROOT/bucket/a for every operation; str() keeps the URI."""

    @property
    def _path_str(self) -> str:
      parts = self.parts
      if parts and parts[0] == SCHEME[:-2]:
        return os.path.join(ROOT, *parts[1:])
      return super()._path_str

    def __str__(self) -> str:
      parts = self.parts
      if parts and parts[0] == SCHEME[:-2]:
        return SCHEME + "/".join(parts[1:])
      return super().__str__()

  import hammer_jax.files as files
  files.REMOTE_PREFIXES = files.REMOTE_PREFIXES + (SCHEME,)
  kvstore = files.tensorstore_kvstore

  def tensorstore_kvstore(p):  # TensorStore's gcs driver, served from the folder
    return kvstore(local(p)) if str(p).startswith(SCHEME) else kvstore(p)

  files.tensorstore_kvstore = tensorstore_kvstore


def local(uri: str) -> str:
  return os.path.join(ROOT, str(uri)[len(SCHEME):])


class _LazyPatches:
  """Patches a library's bucket client right after (if ever) the process imports it."""

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if name not in _PATCHES or name in _DONE:
      return None
    import importlib.machinery  # A spec may be asked for without importing (importlib.util.find_spec)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return None
    exec_module = spec.loader.exec_module

    def exec_and_patch(module):
      exec_module(module)
      _DONE.add(name)
      _PATCHES[name](module)

    spec.loader.exec_module = exec_and_patch
    return spec


def _patch_tensorflow(tf_module):
  del tf_module
  import tensorflow as tf
  pattern, root = "^" + SCHEME.replace("/", "\\/"), ROOT.rstrip("/") + "/"

  def mapped(names):
    if isinstance(names, str):
      return local(names) if names.startswith(SCHEME) else names
    if isinstance(names, (list, tuple)):
      return [mapped(n) for n in names]
    if isinstance(names, tf.data.Dataset):
      return names.map(lambda n: tf.strings.regex_replace(n, pattern, root))
    return tf.strings.regex_replace(names, pattern, root)

  base = tf.data.TFRecordDataset

  class TFRecordDataset(base):  # pylint: disable=missing-class-docstring
    def __init__(self, filenames, *args, **kwargs):
      super().__init__(mapped(filenames), *args, **kwargs)

  tf.data.TFRecordDataset = TFRecordDataset
  create = tf.summary.create_file_writer
  tf.summary.create_file_writer = lambda logdir, *a, **k: create(mapped(logdir), *a, **k)


def _patch_orbax(module):
  del module
  from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
  normalize = ts_utils._normalize_path  # pylint: disable=protected-access
  ts_utils._normalize_path = lambda p: local(p) if str(p).startswith(SCHEME) else normalize(p)


_PATCHES = {"tensorflow": _patch_tensorflow, "orbax.checkpoint": _patch_orbax}
_DONE: set = set()


def _audit(event, args):
  if event in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.listdir", "os.scandir",
               "os.chmod", "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
    for a in args:
      if isinstance(a, (str, bytes)) and (a.startswith(SCHEME) if isinstance(a, str) else a.startswith(SCHEME.encode())):
        raise RuntimeError(f"{event} on a bucket path {a!r}: job paths must go through hammer_jax.files")


if ROOT:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  _register()
  sys.addaudithook(_audit)
  sys.meta_path.insert(0, _LazyPatches())
