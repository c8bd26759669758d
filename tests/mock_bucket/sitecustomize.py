"""A stand-in bucket for tests: `mockgs://...` paths, served from a local folder, in any Python process.

Put this folder on PYTHONPATH and set MOCK_BUCKET_ROOT: every process then
registers the `mockgs://` scheme with etils.epath (the way epath registers
`gs://`), so hammer_jax.files handles `mockgs://bucket/x` like a bucket (no
renames, whole uploads) while its objects live under MOCK_BUCKET_ROOT/bucket/x,
and libraries that open paths themselves get the local folder from
`files.native`. A Python audit hook makes any `open` or `os` call that receives
a `mockgs://` string fail: only code that goes through hammer_jax.files can use
such a path, which is what the cloud-storage test proves.
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
