"""Reading prepared data: a damaged shard or an unprepared folder is one line that says what is
wrong and where; a split, vocabulary or folder that does not match is refused by name."""

import os
import shutil

import pytest

import helpers as dh
from data_prep import tvr
from helpers import pipeline_spec
from prep_helpers import assert_one_line


# -- damaged shards at training / evaluation time -----------------------------------

@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory):
  """A valid tiny TVR corpus: 7 videos in 4 shards (2, 2, 2, 1)."""
  root = tmp_path_factory.mktemp("small")
  inp = dh.TvrInputs(str(root / "in"), n_videos=7)
  out = str(root / "out")
  tvr.prepare_tvr(out, videos_per_shard=2, **inp.kwargs())
  return out


def _spec():
  return pipeline_spec(max_frames=16, max_query_len=16, clip_len=2, num_negatives=2, shuffle_buffer=8)


def _damaged_copy(prepared_small, tmp_path, damage: str) -> tuple[str, str]:
  out = str(tmp_path / "damaged")
  shutil.copytree(prepared_small, out)
  shard = dh.shard_files(out, "videos", "val")[1]
  if damage == "corrupted":
    dh.corrupt_record(shard, 1)
  elif damage == "truncated":
    dh.truncate_in_record(shard, -1)
  else:  # Cut exactly after the first record: the file still parses, one record is gone.
    start, n = dh.tfrecord_offsets(shard)[0]
    with open(shard, "r+b") as f:
      f.truncate(start + n + 4)
  return out, shard


def _read_train(out):
  from hammer_jax.data.input_pipeline import TrainBatches
  from hammer_jax.data.prepared_data import open_prepared
  tb = TrainBatches(open_prepared(out), "val", _spec(), local_batch_size=4, seed=0,
                    process_index=0, process_count=1)
  for _ in range(2 * -(-tb.num_examples // 4)):  # Two epochs.
    next(tb)


def _read_eval(out):
  from hammer_jax.data.input_pipeline import eval_video_batches
  from hammer_jax.data.prepared_data import open_prepared
  for _ in eval_video_batches(open_prepared(out), "val", _spec(), 3, process_index=0, process_count=1):
    pass


@pytest.mark.parametrize("reader", [_read_train, _read_eval], ids=["train", "eval"])
@pytest.mark.parametrize("damage", ["corrupted", "truncated", "cut_at_record_boundary"])
def test_damaged_shard_names_the_shard(prepared_small, tmp_path, reader, damage):
  from hammer_jax.data.input_pipeline import ShardError
  out, shard = _damaged_copy(prepared_small, tmp_path, damage)
  with pytest.raises(ShardError) as e:
    reader(out)
  assert_one_line(str(e.value), os.path.basename(shard))


def test_undamaged_copy_reads_fine(prepared_small, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(prepared_small, out)
  _read_train(out)
  _read_eval(out)


# -- opening prepared data ---------------------------------------------------------

def test_open_unprepared_folder_says_what_to_run(tmp_path):
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared
  folder = tmp_path / "never_prepared"
  folder.mkdir()
  with pytest.raises(PreparedDataError) as e:
    open_prepared(str(folder))
  assert_one_line(str(e.value), str(folder), "prepared.json", "python -m data_prep")
  with pytest.raises(PreparedDataError) as e:
    open_prepared("")
  assert_one_line(str(e.value), "python -m data_prep")


def test_unknown_split_is_named(prepared_small):
  from hammer_jax.data.input_pipeline import TrainBatches, eval_video_batches
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared, read_queries
  data = open_prepared(prepared_small)
  for call in (lambda: data.split("train"), lambda: read_queries(data, "train"),
               lambda: TrainBatches(data, "train", _spec(), local_batch_size=2, seed=0, process_index=0,
                                    process_count=1),
               lambda: next(eval_video_batches(data, "train", _spec(), 2, process_index=0, process_count=1))):
    with pytest.raises(PreparedDataError) as e:
      call()
    assert_one_line(str(e.value), prepared_small, "'train'", "val", "python -m data_prep")


def test_other_vocabulary_is_refused(prepared_small):
  from hammer_jax.model import pretrained
  from hammer_jax.data.prepared_data import PreparedDataError, open_prepared
  data = open_prepared(prepared_small)
  ours = pretrained.vocab_fingerprint(pretrained.resolve_checkpoint_dir(need_weights=False))
  assert data.manifest["vocab_sha256"] == ours
  data.check_vocabulary(ours)
  data.check_vocabulary(None)
  other = "ab" * 32
  with pytest.raises(PreparedDataError) as e:
    data.check_vocabulary(other, "/ckpt/bert-base-uncased")
  assert_one_line(str(e.value), prepared_small, ours[:12], other[:12], "/ckpt/bert-base-uncased",
                   "--text_checkpoint")
