"""What every `python -m data_prep.<source>` command shares: its common flags and its run.

Each converter defines its own source flags (annotation files, feature files)
and a `prepare(flags)`; `run` turns bad input into one `error: ...` line (exit
status 1) and prints the preparation summary.
"""

from __future__ import annotations

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


def run(prepare: Callable[[Any], dict]) -> None:
  """absl main body: `prepare(FLAGS)` -> manifest; bad input exits with one line."""
  from absl import flags
  from data_prep.prepared_writer import format_summary
  from data_prep.records import DataError
  try:
    manifest = prepare(flags.FLAGS)
  except (DataError, pretrained.CheckpointError) as e:
    raise SystemExit(f"error: {e}")
  print(format_summary(manifest))
