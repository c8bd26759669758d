"""What every `python -m data_prep.<source>` command shares: its common flags and its run.

Each converter defines its own source flags (annotation files, feature files)
and a `prepare(flags)`; `run` turns bad input into one `error: ...` line (exit
status 1) and prints the preparation summary.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from hammer_jax.model import pretrained


def define_common_flags(annotation_help: str, split_flags: dict[str, tuple[str, str]]) -> None:
  """--out_dir, --annotation_dir, one --<split>_file per split (split_flags: {split: (flag, what)}) and the rest."""
  from absl import flags
  flags.DEFINE_string("out_dir", None, "Output folder for the prepared data.", required=True)
  flags.DEFINE_string("annotation_dir", "", annotation_help)
  for flag, what in split_flags.values():
    flags.DEFINE_string(flag, "", f"{what} (overrides annotation_dir).")
  flags.DEFINE_string("text_checkpoint", pretrained.DEFAULT_CHECKPOINT, "BERT folder whose tokenizer to use.")
  flags.DEFINE_integer("max_query_len", 64, "Tokens kept per query at preparation ([CLS] and [SEP] included).")
  flags.DEFINE_integer("videos_per_shard", 256, "Videos per TFRecord shard.")
  flags.DEFINE_enum("missing_videos", "error", ["error", "drop"], "What to do with videos absent from the features.")
  flags.DEFINE_bool("overwrite", False, "Replace an out_dir that holds other splits or is not a prepared dataset.")


def common_args(f, split_flags: dict[str, tuple[str, str]]) -> dict[str, Any]:
  """The converter keyword arguments that the common flags give."""
  return dict(out_dir=f.out_dir, annotation_dir=f.annotation_dir,
              split_files={split: getattr(f, flag) for split, (flag, _) in split_flags.items() if getattr(f, flag)},
              text_checkpoint=f.text_checkpoint, max_query_len=f.max_query_len, videos_per_shard=f.videos_per_shard,
              missing_videos=f.missing_videos, overwrite=f.overwrite)


def main(define_flags: Callable[[], None], prepare: Callable[[Any], dict]) -> None:
  """The `__main__` of a converter: its flags, then `run(prepare)` under absl."""
  from absl import app

  def run_main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run(prepare)

  define_flags()
  app.run(run_main)


def run(prepare: Callable[[Any], dict], f: Any = None) -> None:
  """absl main body: `prepare(f)` -> manifest (f: the parsed flags); failures exit with one `error:` line.

  Bad input (DataError, a missing text checkpoint), Ctrl-C and a full disk are
  anticipated: the line says what happened and that the dataset published
  before (named) is intact, since a run only ever writes its own build folder
  until it switches prepared.json (prepared_writer.py). Anything else is a bug
  and keeps its traceback.
  """
  from data_prep.prepared_writer import format_summary
  from data_prep.records import DataError
  if f is None:
    from absl import flags
    f = flags.FLAGS
  try:
    manifest = prepare(f)
  except (DataError, pretrained.CheckpointError) as e:
    raise SystemExit(f"error: {e}")
  except KeyboardInterrupt:
    raise SystemExit(f"error: interrupted (Ctrl-C) while preparing {f.out_dir}; {_state_of(f.out_dir)}") from None
  except Exception as e:  # noqa: BLE001 - only a full disk is turned into a line; the rest is re-raised.
    if not _disk_full(e):
      raise
    where = getattr(e, "filename", None) or f.out_dir
    raise SystemExit(f"error: no space left on the device writing {where}; {_state_of(f.out_dir)}; free space "
                     "(or choose another --out_dir) first") from None
  print(format_summary(manifest))


def _disk_full(e: BaseException) -> bool:
  """ENOSPC / EDQUOT from Python I/O, or TensorFlow's file writers (which raise their own error types)."""
  if isinstance(e, OSError):
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
  return type(e).__name__ == "ResourceExhaustedError" and "No space left" in str(e)


def _state_of(out_dir: str) -> str:
  """What a stopped run leaves: the published dataset (intact), and how to continue."""
  from data_prep.prepared_writer import existing_manifest
  manifest = existing_manifest(out_dir)
  resume = "the same command continues from the finished shards"
  if not manifest:
    return f"no dataset was published there (no prepared.json); {resume}"
  splits = ", ".join(sorted(manifest.get("splits", {})))
  return (f"the dataset prepared there before ({manifest.get('data_folder')}, splits {splits}, named by "
          f"prepared.json) is intact; {resume}")
