"""The one base class of the failures a binary anticipates.

A `HammerError`'s message is one line that names the file (or flag) at fault
and what to do about it; `startup.run`, the runner every binary shares, prints
it as `error: <message>` and exits with status 1. Anything else is a bug and
keeps its traceback. No imports: configs/ subclasses it without pulling in JAX.
"""

from __future__ import annotations


class HammerError(Exception):
  """An anticipated failure, reported as one `error:` line (the message names the file and what to do)."""


class UsageError(HammerError, ValueError):
  """A flag value or argument the binary cannot work with."""
