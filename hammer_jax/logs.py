"""Console logging: our progress lines stay readable, libraries' routine INFO is dropped.

Orbax and TFDS log every file they touch at INFO through absl; a training run
would print hundreds of such lines per checkpoint. Their warnings still show.
"""

import logging as std_logging

from absl import logging

_QUIET_PATHS = ("/orbax/", "/tensorflow_datasets/", "/etils/")


class _LibraryInfoFilter(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      message = record.getMessage()  # TFDS-internal deprecation notices, not ours to act on
      return "TensorInfo.dtype" not in message and "FeatureConnector.dtype" not in message
    return not any(p in record.pathname for p in _QUIET_PATHS)


def quiet_library_logs() -> None:
  """Installs the filter on absl's handler (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
  std_logging.getLogger("absl").addFilter(_LibraryInfoFilter())
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)  # "Unable to initialize backend 'tpu'"
  std_logging.getLogger("faiss.loader").setLevel(std_logging.WARNING)  # "Loading faiss" / which build it picked
