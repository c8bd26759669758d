"""Each HAMMER loss against a hand-computed numpy case (losses.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hammer_jax.model import losses


def _log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def test_vr_loss_excludes_masked_negatives_and_padding_examples():
  scores = np.array([[2.0, 1.0, 0.5], [0.0, 3.0, -1.0], [5.0, 5.0, 5.0]], np.float32)
  neg_mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
  weights = np.array([1, 1, 0], np.float32)  # Example 2 is padding.
  # Example 0: -log(e^2 / (e^2 + e^1 + e^0.5)); example 1: the -1 negative is masked out.
  want0 = -(2.0 - np.log(np.exp(2.0) + np.exp(1.0) + np.exp(0.5)))
  want1 = -(0.0 - np.log(np.exp(0.0) + np.exp(3.0)))
  got = losses.vr_loss(jnp.asarray(scores), jnp.asarray(neg_mask), jnp.asarray(weights))
  np.testing.assert_allclose(got, (want0 + want1) / 2, rtol=1e-6)
  # Masked negatives get exactly zero gradient, and nothing is NaN.
  grad = jax.grad(lambda s: losses.vr_loss(s, jnp.asarray(neg_mask), jnp.asarray(weights)))(jnp.asarray(scores))
  assert np.all(np.isfinite(grad)) and grad[1, 2] == 0 and np.all(grad[2] == 0)
  # No negative at all: the loss is 0 (log 1).
  np.testing.assert_allclose(losses.vr_loss(scores[:, :1], np.zeros((3, 0), np.float32), weights), 0.0, atol=1e-7)


def test_tl_loss_clip_and_frame_terms():
  rng = np.random.default_rng(0)
  b, k, m = 2, 3, 2
  clip_lp = _log_softmax(rng.normal(size=(b, k, 2)), axis=1).astype(np.float32)
  frame_lp = _log_softmax(rng.normal(size=(b, k * m, 3)), axis=-1).astype(np.float32)
  labels = np.zeros((b, k * m, 3), np.float32)
  labels[0, :, 2] = 1; labels[0, 1] = (1, 0, 0); labels[0, 4] = (0, 1, 0)          # start 1, end 4
  labels[1, :3, 2] = 1; labels[1, 2] = (0.5, 0.5, 0)                               # 3 real frames, start = end = 2
  frame_lp[1, 3:] = 0.0  # what the model puts on padded frames
  batch = {"frame_labels": labels, "start_clip": np.array([0, 1]), "end_clip": np.array([2, 1])}
  weights = np.ones(2, np.float32)
  frame_ce = [-(labels[i] * frame_lp[i]).sum() for i in range(b)]
  clip_ce = [-(clip_lp[0, 0, 0] + clip_lp[0, 2, 1]), -(clip_lp[1, 1, 0] + clip_lp[1, 1, 1])]
  total, terms = losses.tl_loss({"frame_log_probs": frame_lp, "clip_log_probs": clip_lp}, batch, weights)
  np.testing.assert_allclose(terms["tl_frame"], np.mean(frame_ce), rtol=1e-5)
  np.testing.assert_allclose(terms["tl_clip"], np.mean(clip_ce), rtol=1e-5)
  np.testing.assert_allclose(total, np.mean(frame_ce) + np.mean(clip_ce), rtol=1e-5)
  # "mean": the frame term divided by the number of real frames (6 and 3).
  _, mean_terms = losses.tl_loss({"frame_log_probs": frame_lp, "clip_log_probs": clip_lp}, batch, weights, "mean")
  np.testing.assert_allclose(mean_terms["tl_frame"], (frame_ce[0] / 6 + frame_ce[1] / 3) / 2, rtol=1e-5)
  # FLAT: no clip level, the frame term alone.
  flat_total, flat_terms = losses.tl_loss({"frame_log_probs": frame_lp}, batch, weights)
  np.testing.assert_allclose(flat_total, np.mean(frame_ce), rtol=1e-5)
  assert "tl_clip" not in flat_terms


def test_mlm_loss_clip_level_and_frame_level():
  rng = np.random.default_rng(1)
  b, k, p, v = 2, 3, 2, 5
  targets = np.array([[1, 4], [2, 0]])
  mlm_w = np.array([[1, 1], [1, 0]], np.float32)   # Example 1 has one masked token.
  ex_w = np.ones(2, np.float32)
  logits = rng.normal(size=(b, p, v)).astype(np.float32)
  lp = _log_softmax(logits)
  want = -(lp[0, 0, 1] + lp[0, 1, 4] + lp[1, 0, 2]) / 3
  np.testing.assert_allclose(losses.mlm_loss(logits, targets, mlm_w, ex_w), want, rtol=1e-5)
  # Frame level: one prediction per clip, averaged over each example's real clips.
  logits4 = rng.normal(size=(b, k, p, v)).astype(np.float32)
  clip_mask = np.array([[1, 1, 0], [1, 0, 0]])
  lp4 = _log_softmax(logits4)
  ce0 = [-lp4[0, c, 0, 1] for c in range(2)]
  ce0b = [-(lp4[0, c, 1, 4]) for c in range(2)]
  ce1 = -lp4[1, 0, 0, 2]
  want4 = (np.mean(ce0) + np.mean(ce0b) + ce1) / 3
  np.testing.assert_allclose(losses.mlm_loss(logits4, targets, mlm_w, ex_w, clip_mask), want4, rtol=1e-5)
  # A padding example contributes nothing.
  np.testing.assert_allclose(losses.mlm_loss(logits, targets, mlm_w, np.array([1, 0], np.float32)),
                             -(lp[0, 0, 1] + lp[0, 1, 4]) / 2, rtol=1e-5)


def _loss_config(**overrides):
  """configs/base.py's `loss` (the paper's weights: 1 : 5 : 0.1, every objective on) with overrides."""
  from configs import base
  c = base.get_base_config().loss
  c.update(overrides)
  return c


def _outputs_and_batch():
  rng = np.random.default_rng(2)
  b, k, m, p, v = 2, 2, 2, 2, 6
  outputs = {
      "vr_scores": rng.normal(size=(b, 3)).astype(np.float32),
      "clip_log_probs": _log_softmax(rng.normal(size=(b, k, 2)), axis=1).astype(np.float32),
      "frame_log_probs": _log_softmax(rng.normal(size=(b, k * m, 3))).astype(np.float32),
      "frame_mlm_logits": rng.normal(size=(b, k, p, v)).astype(np.float32),
      "clip_mlm_logits": rng.normal(size=(b, p, v)).astype(np.float32),
      "clip_mask": np.ones((b, k), np.int32),
  }
  labels = np.zeros((b, k * m, 3), np.float32)
  labels[:, :, 2] = 1
  labels[:, 0] = (1, 0, 0)
  labels[:, 3] = (0, 1, 0)
  batch = {"query_ids": np.zeros((b, 4), np.int32), "neg_mask": np.ones((b, 2), np.float32),
           "frame_labels": labels, "start_clip": np.zeros(b, np.int32), "end_clip": np.ones(b, np.int32),
           "mlm_targets": np.array([[1, 2], [3, 4]]), "mlm_weights": np.ones((b, p), np.float32),
           "example_mask": np.ones(b, np.int32)}
  return outputs, batch


def test_total_is_the_weighted_sum_of_the_terms():
  outputs, batch = _outputs_and_batch()
  total, terms = losses.hammer_loss(outputs, batch, _loss_config())
  w = np.ones(2, np.float32)
  vr = losses.vr_loss(outputs["vr_scores"], batch["neg_mask"], w)
  tl, _ = losses.tl_loss(outputs, batch, w)
  fm = losses.mlm_loss(outputs["frame_mlm_logits"], batch["mlm_targets"], batch["mlm_weights"], w,
                       outputs["clip_mask"])
  cm = losses.mlm_loss(outputs["clip_mlm_logits"], batch["mlm_targets"], batch["mlm_weights"], w)
  np.testing.assert_allclose(terms["mlm"], fm + cm, rtol=1e-6)
  np.testing.assert_allclose(total, 1.0 * vr + 5.0 * tl + 0.1 * (fm + cm), rtol=1e-6)
  np.testing.assert_allclose(terms["total"], total)
  assert {"vr", "tl", "tl_clip", "tl_frame", "mlm", "frame_mlm", "clip_mlm", "total"} == set(terms)


@pytest.mark.parametrize("switch,gone", [("use_vr", {"vr"}), ("use_tl", {"tl", "tl_clip", "tl_frame"}),
                                         ("use_frame_mlm", {"frame_mlm"}), ("use_clip_mlm", {"clip_mlm"})])
def test_each_objective_can_be_switched_off(switch, gone):
  outputs, batch = _outputs_and_batch()
  _, full = losses.hammer_loss(outputs, batch, _loss_config())
  total, terms = losses.hammer_loss(outputs, batch, _loss_config(**{switch: False}))
  assert not gone & set(terms)
  removed = {"use_vr": 1.0 * full["vr"], "use_tl": 5.0 * full["tl"],
             "use_frame_mlm": 0.1 * full["frame_mlm"], "use_clip_mlm": 0.1 * full["clip_mlm"]}[switch]
  np.testing.assert_allclose(total, full["total"] - removed, rtol=1e-5)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dual_encoder_loss_hand_computed():
  """In-batch InfoNCE: a video's score is its best real clip; same-video rows and padding leave the softmax."""
  rng = np.random.default_rng(3)
  b, k, e = 4, 3, 5
  q = _unit(rng.normal(size=(b, e)))
  clips = _unit(rng.normal(size=(b, k, e)))
  clip_mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
  video_index = np.array([7, 8, 7, 9])   # Rows 0 and 2 are queries of the same video.
  weights = np.array([1, 1, 1, 0])       # Row 3 is padding: neither a query nor a candidate.
  scale = 10.0
  sim = np.full((b, b), -np.inf)
  for i in range(b):
    for j in range(b):
      sim[i, j] = scale * max(q[i] @ clips[j, c] for c in range(k) if clip_mask[j, c])
  want = []
  for i in range(3):
    cands = [j for j in range(b) if j == i or (weights[j] and video_index[j] != video_index[i])]
    want.append(-(sim[i, i] - np.log(np.sum(np.exp(sim[i, cands])))))
  got = losses.dual_encoder_loss(jnp.asarray(q, jnp.float32), jnp.asarray(clips, jnp.float32), clip_mask,
                                 video_index, jnp.asarray(weights, jnp.float32), scale)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)
  # Perfectly aligned pairs (each query its video's clip, orthogonal otherwise) at a large scale: loss -> 0.
  eye = np.eye(b, e)
  aligned = losses.dual_encoder_loss(eye, np.repeat(eye[:, None], k, 1), np.ones((b, k)), np.arange(b),
                                     np.ones(b, np.float32), 100.0)
  assert float(aligned) < 1e-6


def test_dual_encoder_off_is_the_papers_loss_and_model():
  """The switch off (paper configs): no dual-encoder parameters, no term, total = Eq. 14."""
  import jax
  from configs import tvr
  from hammer_jax.model import build
  from helpers import SUBTITLE_DIM, VIDEO_DIM, random_batch, tiny_model_config
  outputs, batch = _outputs_and_batch()
  assert tvr.get_config().loss.use_dual_encoder is False
  paper = _loss_config(use_dual_encoder=False, dual_encoder_weight=1.0)
  total, terms = losses.hammer_loss(dict(outputs, query_embedding=np.ones((2, 3), np.float32)), batch, paper)
  assert "dual_encoder" not in terms
  np.testing.assert_allclose(total, losses.hammer_loss(outputs, batch, _loss_config())[0], rtol=1e-6)
  c = tiny_model_config()
  for on in (False, True):
    c.loss.use_dual_encoder = on
    model = build.create_model(c, VIDEO_DIM, SUBTITLE_DIM)
    batch2 = random_batch(c, 2)
    params = jax.eval_shape(lambda: build.init_random_params(model, jax.random.key(0), batch2))
    assert ("dual_encoder" in params["params"]) == on
    out = jax.eval_shape(lambda p: model.apply(p, batch2), params)
    assert ("query_embedding" in out) == on
    if on:
      assert out["clip_embeddings"].shape == (2, c.data.max_frames // c.data.clip_len, c.model.dual_encoder_dim)


def test_hardest_negatives_are_the_first_stages_top_other_videos():
  from hammer_jax.model.dual_encoder import hardest_negatives
  # Query i and clip vectors in 2-d; one clip per video except video 3 (two clips, the second padded).
  q = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [1, 0]], np.float32)
  c = np.array([[[1, 0], [0, 0]], [[0.8, 0.6], [0, 0]], [[0.6, 0.8], [0, 0]], [[0, 1], [1, 0]],
                [[-1, 0], [0, 0]]], np.float32)
  clip_mask = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0]], np.int32)  # row 3's [1, 0] clip is padding
  video = np.array([0, 1, 0, 3, 4], np.int32)                                # rows 0 and 2: the same video
  example = np.array([1, 1, 1, 1, 0], np.int32)                              # row 4: padding
  index, mask = hardest_negatives(q, c, clip_mask, video, example, 2)
  # Query 0 (video 0): candidates rows 1 (0.8), 3 (0.0); row 2 is its own video, row 4 padding.
  np.testing.assert_array_equal(index[0], [1, 3])
  # Query 1 (0, 1): rows 3 (1.0), 2 (0.8) beat row 0 (0.0).
  np.testing.assert_array_equal(index[1], [3, 2])
  # Query 3 (0.6, 0.8): row 2 (1.0), then row 1 (0.96); its padded clip [1, 0] would not count anyway.
  np.testing.assert_array_equal(index[3], [2, 1])
  np.testing.assert_array_equal(mask[:4], np.ones((4, 2)))
  # More negatives than other videos: the extra slots are masked out.
  index, mask = hardest_negatives(q, c, clip_mask, video, example, 4)
  np.testing.assert_array_equal(mask[0], [1, 1, 0, 0])
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 0])
  # No gradient flows through the choice.
  g = jax.grad(lambda x: hardest_negatives(x, c, clip_mask, video, example, 2)[1].sum())(jnp.asarray(q))
  assert np.all(g == 0)


def test_hard_negatives_need_the_dual_encoder():
  from configs import tvr
  from configs.base import ConfigError
  from hammer_jax.model import build
  c = tvr.get_config()
  c.model.text_checkpoint = None
  c.data.negatives = "hard"
  with pytest.raises(ConfigError, match="use_dual_encoder"):
    build.model_config(c, 16, 8)
  c.data.negatives = "closest"
  c.loss.use_dual_encoder = True
  with pytest.raises(ConfigError, match="'random' or 'hard'"):
    build.model_config(c, 16, 8)
  assert build.model_config(tvr.get_config("recommended"), 16, 8).hard_negatives
