"""Metrics (metrics.py) and prediction files (predictions.py), TVR standalone-eval conventions."""

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from hammer_jax.retrieval import metrics as M
from hammer_jax.retrieval import predictions as P

VIDEOS = {f"vid{i}": i for i in range(20)}


def _gt(desc_id, vid, st, ed, typ="v"):
  return {"desc_id": desc_id, "desc": f"query {desc_id}", "vid_name": f"vid{vid}", "ts": [st, ed], "type": typ}


def _entry(desc_id, preds):
  """preds: [(vid, st, ed)] in ranked order -> entry with strictly decreasing scores."""
  return {"desc_id": desc_id, "desc": f"query {desc_id}",
          "predictions": [[v, float(s), float(e), float(len(preds) - j)] for j, (v, s, e) in enumerate(preds)]}


def _submission(vcmr, svmr=None, vr=None):
  return P.make_submission(VIDEOS, vcmr=vcmr, svmr=svmr if svmr is not None else vcmr,
                           vr=vr if vr is not None else [
                               _entry(e["desc_id"], [(p[0], 0, 0) for p in e["predictions"]]) for e in vcmr])


# --- IoU ---------------------------------------------------------------------------------------------

def test_temporal_iou_and_pairwise():
  pred = np.array([[0, 5], [2, 4], [6, 8], [3, 3]], np.float32)
  gt = np.array([[0, 10], [3, 5], [0, 5], [3, 3]], np.float32)
  np.testing.assert_allclose(M.temporal_iou(pred, gt), [0.5, 1 / 3, 0.0, 0.0], rtol=1e-6)  # union 0 -> 0
  pair = M.pairwise_temporal_iou(pred, gt[:2])
  assert pair.shape == (4, 2)
  np.testing.assert_allclose(pair[:, 0], M.temporal_iou(pred, np.broadcast_to(gt[0], (4, 2))))


def test_iou_exactly_at_the_threshold_counts():
  gt = [_gt(0, 1, 0.0, 10.0), _gt(1, 1, 0.0, 10.0), _gt(2, 1, 0.0, 10.0)]
  vcmr = [_entry(0, [(1, 0, 5)]),     # IoU 0.5 exactly
          _entry(1, [(1, 0, 7)]),     # IoU 0.7 exactly
          _entry(2, [(1, 0, 6.99)])]  # just under 0.7
  res = M.evaluate_predictions(_submission(vcmr), gt)
  assert res["VCMR"]["0.5-r1"] == 100.0 and res["SVMR"]["0.5-r1"] == 100.0
  assert res["VCMR"]["0.7-r1"] == 33.33 and res["SVMR"]["0.7-r1"] == 33.33  # 0.5 and 0.699 miss


# --- ranking rules -----------------------------------------------------------------------------------

def test_ties_keep_the_given_order():
  # make_entry sorts by score, stably: the wrong (video 3) and right (video 1) moment tie.
  wrong_first = P.make_entry(0, "q", [2, 3, 1], [0, 0, 0], [1, 10, 10], [0.1, 0.5, 0.5])
  assert [p[0] for p in wrong_first["predictions"]] == [3, 1, 2]
  right_first = P.make_entry(0, "q", [2, 1, 3], [0, 0, 0], [1, 10, 10], [0.1, 0.5, 0.5])
  assert [p[0] for p in right_first["predictions"]] == [1, 3, 2]
  gt = [_gt(0, 1, 0.0, 10.0)]
  a = M.evaluate_predictions(_submission([wrong_first]), gt)["VCMR"]
  b = M.evaluate_predictions(_submission([right_first]), gt)["VCMR"]
  assert (a["0.5-r1"], a["0.5-r5"], b["0.5-r1"], b["0.5-r5"]) == (0.0, 100.0, 100.0, 100.0)
  assert M.vcmr_recall([[[1, 0, 10], [3, 0, 10]]], M.GroundTruth.from_records(gt, VIDEOS), ks=(1,))["0.5-r1"] == 100
  assert M.vcmr_recall([[[3, 0, 10], [1, 0, 10]]], M.GroundTruth.from_records(gt, VIDEOS), ks=(1,))["0.5-r1"] == 0


def test_evaluation_reads_predictions_in_given_order_not_by_score():
  gt = M.GroundTruth.from_records([_gt(0, 1, 0, 10)], VIDEOS)
  # Scores say video 1 is best, but the list puts it second: the reference never re-sorts.
  assert M.vr_recall([[[3, 0, 0, 0.1], [1, 0, 0, 0.9]]], gt, ks=(1, 2)) == {"r1": 0.0, "r2": 100.0}


def test_video_absent_from_top_100_is_a_miss_and_its_rank_is_length_plus_one():
  gt = M.GroundTruth.from_records([_gt(0, 19, 0, 10), _gt(1, 19, 0, 10)], VIDEOS)
  long_list = [[i % 19, 0, 10] for i in range(100)] + [[19, 0, 10]]  # right video at position 101
  short_list = [[0, 0, 10], [1, 0, 10], [2, 0, 10]]
  preds = [long_list, short_list]
  assert M.vr_recall(preds, gt) == {"r1": 0.0, "r5": 0.0, "r10": 0.0, "r100": 0.0}
  assert M.vcmr_recall(preds, gt)["0.5-r100"] == 0.0
  np.testing.assert_array_equal(M.vr_ranks(preds, gt), [101, 4])
  # Without truncation the 101st prediction would count: truncation is what makes it a miss.
  assert M.vr_recall(preds, gt, ks=(101,), max_pred_per_query=101)["r101"] == 50.0


def test_truncation_to_100_predictions():
  gt = M.GroundTruth.from_records([_gt(0, 5, 0, 10)], VIDEOS)
  at = lambda pos: [[[0, 0, 10]] * pos + [[5, 0, 10]] + [[0, 0, 10]] * 5]
  assert M.vcmr_recall(at(99), gt)["0.7-r100"] == 100.0  # 100th prediction
  assert M.vcmr_recall(at(100), gt)["0.7-r100"] == 0.0   # 101st prediction
  # SVMR truncates before dropping other videos: the 101st is gone although it is 1st in its video.
  assert M.svmr_recall(at(100), gt)["0.7-r1"] == 0.0 and M.svmr_recall(at(99), gt)["0.7-r1"] == 100.0
  assert M.vr_ranks(at(99), gt)[0] == 100 and M.vr_ranks(at(100), gt)[0] == 101


def test_svmr_drops_other_videos_before_taking_the_top_k():
  gt = M.GroundTruth.from_records([_gt(0, 1, 0, 10)], VIDEOS)
  preds = [[[2, 0, 10], [2, 0, 10], [1, 0, 10]]]  # right moment 3rd overall, 1st in its video
  assert M.svmr_recall(preds, gt, ks=(1,))["0.5-r1"] == 100.0
  assert M.vcmr_recall(preds, gt, ks=(1,))["0.5-r1"] == 0.0


def test_median_rank_even_count_is_the_mean_of_the_middle_two():
  gt = M.GroundTruth.from_records([_gt(i, 0, 0, 1) for i in range(4)], VIDEOS)
  preds = [[[v, 0, 0] for v in range(1, r)] + [[0, 0, 0]] for r in (1, 2, 4, 10)]  # ranks 1, 2, 4, 10
  np.testing.assert_array_equal(M.vr_ranks(preds, gt), [1, 2, 4, 10])
  assert M.vr_median_rank(preds, gt) == 3.0
  res = M.evaluate_predictions(P.make_submission(VIDEOS, vr=[_entry(i, p) for i, p in enumerate(preds)]),
                               [_gt(i, 0, 0, 1) for i in range(4)])
  assert res["VR"]["median_rank"] == 3.0 and res["VR"]["r1"] == 25.0


# --- whole evaluation --------------------------------------------------------------------------------

def _random_gt(rng, n=12):
  return [_gt(i, int(rng.integers(20)), float(s), float(s) + 8.0, M.DESC_TYPES[i % 3])
          for i, s in enumerate(rng.integers(0, 40, size=n))]


def test_oracle_predictions_score_100_everywhere():
  gt = _random_gt(np.random.default_rng(1))
  vcmr = [_entry(r["desc_id"], [(VIDEOS[r["vid_name"]], *r["ts"])]) for r in gt]
  res = M.evaluate_predictions(_submission(vcmr), gt)
  for task in M.TASK_TYPES:
    assert all(v == 100.0 for k, v in res[task].items() if k != "median_rank"), res[task]
    assert all(v == 100.0 for k, v in res[f"{task}_by_type"].items() if "-r" in k)
  assert res["VR"]["median_rank"] == 1.0


def test_iou_0_6_scores_100_at_0_5_and_0_at_0_7():
  gt = _random_gt(np.random.default_rng(2))
  # An 8 s span shifted by 2 s: intersection 6, union 10.
  vcmr = [_entry(r["desc_id"], [(VIDEOS[r["vid_name"]], r["ts"][0] + 2, r["ts"][1] + 2)]) for r in gt]
  res = M.evaluate_predictions(_submission(vcmr), gt)
  for task in ("VCMR", "SVMR"):
    assert all(res[task][f"0.5-r{k}"] == 100.0 for k in M.RECALL_KS)
    assert all(res[task][f"0.7-r{k}"] == 0.0 for k in M.RECALL_KS)


def test_per_type_breakdown():
  gt = [_gt(0, 1, 0, 10, "v"), _gt(1, 1, 0, 10, "v"), _gt(2, 1, 0, 10, "t"), _gt(3, 1, 0, 10, "vt")]
  right, wrong = (1, 0, 10), (2, 0, 10)
  vcmr = [_entry(0, [right]), _entry(1, [wrong, right]), _entry(2, [wrong]), _entry(3, [right])]
  res = M.evaluate_predictions(_submission(vcmr), gt)
  by = res["VCMR_by_type"]
  assert (by["v-0.5-r1"], by["v-0.5-r5"], by["t-0.5-r1"], by["vt-0.5-r1"]) == (50.0, 100.0, 0.0, 100.0)
  assert res["VCMR"]["0.5-r1"] == 50.0 and by["desc_type_ratio"] == "v 50.0 t 25.0 vt 25.0"
  assert res["VR_by_type"]["v-median_rank"] == 1.5 and res["VR_by_type"]["t-r1"] == 0.0
  assert list(res) == ["VCMR", "SVMR", "VR", "VCMR_by_type", "SVMR_by_type", "VR_by_type"]
  # A type without queries is NaN (0/0, as the reference); no types at all: no breakdown.
  res = M.evaluate_predictions(_submission(vcmr[:2]), gt[:2])
  assert np.isnan(res["VCMR_by_type"]["t-0.5-r1"])
  untyped = [{k: v for k, v in r.items() if k != "type"} for r in gt]
  assert "VCMR_by_type" not in M.evaluate_predictions(_submission(vcmr), untyped)
  table = M.format_table(res)
  assert "| VCMR | 0.5-r1 |" in table and "| t | - |" in table


def test_query_missing_from_predictions():
  gt = [_gt(0, 1, 0, 10), _gt(1, 1, 0, 10)]
  sub = _submission([_entry(0, [(1, 0, 10)])])
  with pytest.raises(ValueError, match="desc_ids of predictions and ground truth must match"):
    M.evaluate_predictions(sub, gt)
  # match_number=False: the missing query is left out of the denominators (reference behaviour).
  assert M.evaluate_predictions(sub, gt, match_number=False)["VCMR"]["0.5-r1"] == 100.0


def test_tl_metrics_and_rounding():
  res = M.tl_metrics([[0, 10], [0, 5], [0, 3]], [[0, 10], [0, 10], [0, 10]])
  assert res == {"mIoU": 60.0, "0.3-r1": 100.0, "0.5-r1": 66.67, "0.7-r1": 33.33}
  assert M.rounded_percentage(1 / 3) == 33.33 and M.rounded_percentage(2 / 3) == 66.67
  assert "| TL | mIoU |" in M.format_table({"TL": res})


# --- prediction files --------------------------------------------------------------------------------

def _random_submission(rng, n_query=50, n_video=20):
  gt = [_gt(i, int(rng.integers(n_video)), s, s + float(rng.integers(1, 12)) / 2, M.DESC_TYPES[i % 3])
        for i, s in enumerate((rng.integers(0, 20, size=n_query) / 2).tolist())]
  video2idx = {f"vid{i}": i for i in range(n_video)}
  vcmr, svmr, vr = [], [], []
  for r in gt:
    n = int(rng.integers(2, 130))  # some over 100: truncation
    vid = rng.integers(n_video, size=n)
    st = rng.integers(0, 20, size=n) / 2
    ed = st + rng.integers(0, 12, size=n) / 2
    # Plant some near-copies of the ground truth so that hits happen (not always).
    plant = rng.random(n) < 0.02
    vid[plant] = video2idx[r["vid_name"]]
    st[plant], ed[plant] = r["ts"][0] + rng.integers(-2, 3, plant.sum()) / 2, r["ts"][1]
    st = np.clip(st, 0, ed)
    score = rng.integers(0, 5, size=n).astype(float)  # many ties
    vcmr.append(P.make_entry(r["desc_id"], r["desc"], vid, st, ed, score))
    own = vid == video2idx[r["vid_name"]]
    if own.any():
      svmr.append(P.make_entry(r["desc_id"], r["desc"], vid[own], st[own], ed[own], score[own]))
    else:
      svmr.append(P.make_entry(r["desc_id"], r["desc"], [0], [0], [1], [0]))
    videos = rng.permutation(n_video)[: int(rng.integers(1, n_video + 1))]
    vr.append(P.make_vr_entry(r["desc_id"], r["desc"], videos, -np.arange(len(videos))))
  return P.make_submission(video2idx, vcmr, svmr, vr), gt


def _brute_force(sub, gt):
  """Loops and exact fractions; independent of metrics.py."""
  ious, ks = ("0.5", "0.7"), (1, 5, 10, 100)
  out = {}
  gt_by = {r["desc_id"]: r for r in gt}
  for task in ("VCMR", "SVMR", "VR"):
    per_key = {}
    ranks = []
    for e in sub[task]:
      r = gt_by[e["desc_id"]]
      target = sub["video2idx"][r["vid_name"]]
      preds = e["predictions"][:100]
      if task == "SVMR":
        preds = [p for p in preds if p[0] == target]
      if task == "VR":
        rank = next((j + 1 for j, p in enumerate(preds) if p[0] == target), len(preds) + 1)
        ranks.append(rank)
        for k in ks:
          per_key.setdefault(f"r{k}", []).append((rank <= min(k, len(preds)), r["type"]))
        continue
      g0, g1 = Fraction(r["ts"][0]), Fraction(r["ts"][1])
      for thr in ious:
        for k in ks:
          hit = False
          for p in preds[:k]:
            p0, p1 = Fraction(p[1]), Fraction(p[2])
            inter = max(Fraction(0), min(p1, g1) - max(p0, g0))
            union = max(p1, g1) - min(p0, g0)
            hit |= p[0] == target and union > 0 and inter / union >= Fraction(thr)
          per_key.setdefault(f"{thr}-r{k}", []).append((hit, r["type"]))
    pct = lambda hits: round(100 * sum(hits) / len(hits), 2)
    out[task] = {key: pct([h for h, _ in v]) for key, v in per_key.items()}
    out[task + "_by_type"] = {f"{t}-{key}": pct([h for h, ty in v if ty == t])
                              for t in ("v", "t", "vt") for key, v in per_key.items()}
    if task == "VR":
      s = sorted(ranks)
      out[task]["median_rank"] = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
  return out


def test_matches_an_independent_brute_force_on_random_data():
  rng = np.random.default_rng(0)
  for _ in range(3):
    sub, gt = _random_submission(rng)
    P.validate_submission(sub)
    got, want = M.evaluate_predictions(sub, gt), _brute_force(sub, gt)
    for task, values in want.items():
      for key, v in values.items():
        assert got[task][key] == pytest.approx(v, abs=1e-9), (task, key)
    for task, key in (("VCMR", "0.5-r10"), ("VCMR", "0.7-r100"), ("SVMR", "0.7-r1"), ("VR", "r5")):
      assert 0 < got[task][key] < 100, (task, key, got[task])  # non-trivial cases


def test_prediction_file_round_trips(tmp_path):
  sub, gt = _random_submission(np.random.default_rng(3))
  path = str(tmp_path / "sub" / "pred.json")
  P.write_submission(path, sub)
  assert os.listdir(tmp_path / "sub") == ["pred.json"]  # no temp file left behind
  loaded = P.load_submission(path)
  assert loaded == sub
  before, after = M.evaluate_predictions(sub, gt), M.evaluate_predictions(loaded, gt)
  assert json.dumps(before) == json.dumps(after)
  # The array API gives the same numbers.
  g = M.GroundTruth.from_records(gt, sub["video2idx"])
  assert M.vcmr_recall([e["predictions"] for e in sub["VCMR"]], g) == before["VCMR"]
  assert M.vr_median_rank([e["predictions"] for e in sub["VR"]], g) == before["VR"]["median_rank"]
  assert all(len(e["predictions"]) <= 100 for e in sub["VCMR"])


@pytest.mark.parametrize("breaks, field", [
    (lambda s: s["VCMR"][2].pop("predictions"), "missing key 'predictions'"),
    (lambda s: s["SVMR"][2].pop("desc_id"), "missing key 'desc_id'"),
    (lambda s: s["VCMR"][2]["predictions"].extend([[1, 0.0, 1.0, -1.0]] * 101), "field 'predictions' has"),
    (lambda s: s["VCMR"][2]["predictions"][1].__setitem__(1, 1e6), "field 'predictions[1].st'"),
    (lambda s: s["VCMR"][2]["predictions"][1].__setitem__(0, 99), "field 'predictions[1].vid_idx' 99"),
    (lambda s: s["VR"][2]["predictions"][0].__setitem__(2, 3.0), "field 'predictions[0].st/ed'"),
    (lambda s: s["VCMR"][2]["predictions"][0].__setitem__(3, -1e9), "field 'predictions[1].score'"),
    (lambda s: s["VCMR"][2]["predictions"][0].__setitem__(1, "a"), "field 'predictions[0].st' is not a number"),
])
def test_invalid_files_raise_one_line_errors_naming_entry_and_field(tmp_path, breaks, field):
  sub, _ = _random_submission(np.random.default_rng(4), n_query=5)
  for task in P.TASKS:
    sub[task][2]["predictions"] = sub[task][2]["predictions"][:3]
  P.validate_submission(sub)
  breaks(sub)
  with pytest.raises(ValueError) as err:
    P.validate_submission(sub)
  msg = str(err.value)
  assert "\n" not in msg and field in msg, msg
  assert "desc_id=2" in msg or ("desc_id='?'" in msg and "[2]" in msg), msg
  path = tmp_path / "bad.json"
  with pytest.raises(ValueError):
    P.write_submission(str(path), sub)
  assert not path.exists() and not os.listdir(tmp_path)
