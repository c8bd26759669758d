"""Tests of the HAMMER model (hammer.py, encoders.py) and its FLOP count (flops.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hammer_jax import flops, hammer, losses
from hammer_jax.hammer import Hammer
from model_fixtures import SUBTITLE_DIM, VIDEO_DIM, random_batch, tiny_config


def _build(config, batch, seed=0):
  model = hammer.create_model(config, VIDEO_DIM, SUBTITLE_DIM)
  params = hammer.init_params(model, config, jax.random.PRNGKey(seed), batch)
  return model, params


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda p, b: model.apply(p, b, deterministic=True))


@pytest.mark.parametrize("flat", [False, True], ids=["hammer", "flat"])
@pytest.mark.parametrize("subtitles", [True, False], ids=["asr", "visual"])
def test_output_shapes(flat, subtitles):
  c = tiny_config(flat=flat, subtitles=subtitles)
  b = random_batch(c, batch_size=3)
  model, params = _build(c, b)
  out = _forward(model)(params, b)
  f, k, p, j, vocab = 16, 1 if flat else 4, 3, 2, 64
  expected = {"vr_score": (3,), "vr_scores": (3, 1 + j), "clip_mask": (3, k),
              "start_log_scores": (3, f), "end_log_scores": (3, f), "frame_log_probs": (3, f, 3),
              "frame_mlm_logits": (3, k, p, vocab)}
  if not flat:
    expected.update({"clip_log_probs": (3, k, 2), "clip_mlm_logits": (3, p, vocab)})
  assert {key: v.shape for key, v in out.items()} == expected
  for v in out.values():
    assert np.all(np.isfinite(np.asarray(v, np.float32)))
  # The subtitle stream exists iff ASR is on: concat width 2d in the frame head.
  head_in = params["params"]["frame_head"]["kernel"].shape[0]
  assert head_in == (3 if subtitles else 2) * 32
  # Log-probabilities are normalised: over B/E/O per real frame, over real clips per column.
  fm = b["frame_mask"] > 0
  np.testing.assert_allclose(np.exp(np.asarray(out["frame_log_probs"]))[fm].sum(-1), 1.0, atol=1e-5)
  if not flat:
    np.testing.assert_allclose(np.exp(np.asarray(out["clip_log_probs"])).sum(1), 1.0, atol=1e-5)
  assert np.all(np.asarray(out["start_log_scores"])[~fm] <= hammer.NEG_INF / 2)


def _valid_outputs(out, batch):
  """The outputs at valid positions only (what padding must not change)."""
  fm = batch["frame_mask"] > 0
  cm = np.asarray(out["clip_mask"]) > 0
  res = {"vr_scores": out["vr_scores"],
         "start": np.asarray(out["start_log_scores"])[fm], "end": np.asarray(out["end_log_scores"])[fm],
         "frame_lp": np.asarray(out["frame_log_probs"])[fm],
         "frame_mlm": np.asarray(out["frame_mlm_logits"])[cm]}
  if "clip_log_probs" in out:
    res["clip_lp"] = np.asarray(out["clip_log_probs"])[cm]
    res["clip_mlm"] = out["clip_mlm_logits"]
  return res


@pytest.mark.parametrize("flat", [False, True], ids=["hammer", "flat"])
def test_padding_does_not_leak(flat):
  # max_frames 24 sizes the position tables; the same content fed at F=16 and F=24
  # (two more fully padded clips) and at L=8 and L=12 must score identically.
  c = tiny_config(flat=flat, max_frames=24, max_query_len=12)
  lens = dict(num_frames=np.array([16, 5, 9, 13]), query_lens=np.array([8, 4, 6, 7]))
  small = random_batch(c, 4, pad_frames_to=16, pad_query_to=8, **lens)
  big = random_batch(c, 4, pad_frames_to=24, pad_query_to=12, **lens)
  np.testing.assert_array_equal(big["video"][:, :16], small["video"])
  model, params = _build(c, small)
  a = _valid_outputs(model.apply(params, small), small)
  z = _valid_outputs(model.apply(params, big), big)
  assert a.keys() == z.keys()
  for key in a:
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(z[key]), rtol=1e-5, atol=1e-5, err_msg=key)
  # And the padded content itself must not matter: garbage in padded frames/tokens.
  noisy = {key: np.array(v) for key, v in big.items()}
  noisy["video"][big["frame_mask"] == 0] = 7.0
  noisy["subtitle"][big["frame_mask"] == 0] = -3.0
  noisy["query_ids"][big["query_mask"] == 0] = 5
  n = _valid_outputs(model.apply(params, noisy), noisy)
  for key in a:
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(n[key]), rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("flat", [False, True], ids=["hammer", "flat"])
def test_split_forward_matches_call(flat):
  c = tiny_config(flat=flat)
  b = random_batch(c, 4, seed=3)
  model, params = _build(c, b)
  out = model.apply(params, b)
  q = model.apply(params, b["query_ids"], b["query_mask"], method=Hammer.encode_query)
  v = model.apply(params, b["video"], b["subtitle"], b["frame_mask"], method=Hammer.encode_video)
  take = lambda tree, idx: jax.tree_util.tree_map(lambda x: x[np.asarray(idx)], tree)
  # Positives, one pair at a time.
  for i in range(4):
    pair = model.apply(params, take(q, [i]), take(v, [i]), method=Hammer.score_pairs)
    for key in ("start_log_scores", "end_log_scores", "frame_log_probs") + (() if flat else ("clip_log_probs",)):
      np.testing.assert_allclose(pair[key][0], out[key][i], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(pair["vr_score"][0], out["vr_scores"][i, 0], rtol=1e-5, atol=1e-5)
  # Every (query, negative video) pair as one batch of pairs, full and retrieval-only.
  qi = np.repeat(np.arange(4), 2)
  vi = b["neg_index"].reshape(-1)
  full = model.apply(params, take(q, qi), take(v, vi), method=Hammer.score_pairs)
  fast = model.apply(params, take(q, qi), take(v, vi), method=Hammer.score_pairs, retrieval_only=True)
  np.testing.assert_allclose(full["vr_score"].reshape(4, 2), out["vr_scores"][:, 1:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast["vr_score"], full["vr_score"], rtol=1e-5, atol=1e-5)
  assert "start_log_scores" not in fast


def test_every_parameter_gets_a_gradient():
  c = tiny_config()  # HAMMER with ASR, every objective on.
  b = random_batch(c, 4, seed=1)
  model, params = _build(c, b)

  def loss_fn(p):
    return losses.hammer_loss(model.apply(p, b), b, c.loss)[0]

  grads = jax.jit(jax.grad(loss_fn))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.abs(np.asarray(g)) > 0)]
  # Every leaf gets a gradient. (Inside leaves, unused rows legitimately get none:
  # token type 1, position rows past the lengths, vocabulary rows never seen.)
  assert not dead, dead
  assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


@pytest.mark.parametrize("overrides", [
    dict(share_encoders=True), dict(cross_modal=False), dict(clip_position_embedding=False),
    dict(frame_position="absolute"), dict(clip_len=8), dict(clip_len=5),
], ids=["shared", "no_xmodal", "no_clip_pos", "abs_pos", "clip8", "clip5"])
def test_ablation_variants(overrides):
  c = tiny_config(**overrides)
  b = random_batch(c, 3, seed=2)
  model, params = _build(c, b)
  p = params["params"]
  if overrides.get("share_encoders"):
    assert "clip_encoder" not in p and "clip_input_visual" in p
  if overrides.get("cross_modal") is False:
    assert not any(key.startswith("cross_modal") for key in p["frame_encoder"])
  if overrides.get("clip_position_embedding") is False:
    assert "position_embeddings" not in p["clip_input_visual"]
  if overrides.get("frame_position") == "absolute":
    assert p["frame_input_visual"]["position_embeddings"]["embedding"].shape[0] == 16 + 1
  out = model.apply(params, b)
  k = -(-16 // c.model.clip_len)
  assert out["clip_log_probs"].shape == (3, k, 2)
  total, terms = losses.hammer_loss(out, b, c.loss)
  assert np.isfinite(total)
  # The query must reach the heads in every variant (with no cross-modal layer
  # through the late interaction): a different query changes the VR score.
  other = dict(b, query_ids=np.roll(b["query_ids"], 1, axis=0), query_mask=np.roll(b["query_mask"], 1, axis=0))
  assert not np.allclose(model.apply(params, other)["vr_scores"], out["vr_scores"])


def test_bfloat16_runs_and_is_close_to_float32():
  c = tiny_config()
  b = random_batch(c, 4, seed=4)
  model, params = _build(c, b)
  c16 = tiny_config(dtype="bfloat16")
  model16 = hammer.create_model(c16, VIDEO_DIM, SUBTITLE_DIM)
  out = model.apply(params, b)
  out16 = model16.apply(params, b)  # Same float32 params, bf16 compute.
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  for key in ("vr_scores", "start_log_scores", "frame_log_probs", "clip_log_probs", "frame_mlm_logits"):
    a, z = np.asarray(out[key], np.float32), np.asarray(out16[key], np.float32)
    assert np.all(np.isfinite(z)), key
    valid = a > hammer.NEG_INF / 2
    err = np.max(np.abs(a[valid] - z[valid]))
    assert err < 0.1 * max(1.0, np.max(np.abs(a[valid]))), (key, err)
  loss32 = losses.hammer_loss(out, b, c.loss)[0]
  loss16 = losses.hammer_loss(out16, b, c.loss)[0]
  assert abs(float(loss16) - float(loss32)) < 0.02 * abs(float(loss32))


@pytest.mark.parametrize("overrides", [dict(), dict(flat=True), dict(subtitles=False, share_encoders=True),
                                       dict(cross_modal=False)], ids=["hammer", "flat", "shared", "no_xmodal"])
def test_flops_match_xla_cost_analysis(overrides):
  # ReLU instead of the exact-erf GELU: XLA counts erf's ~60 element-wise FLOPs per
  # FFN unit, which flops.py (matmul-only, the MFU convention) leaves out. With ReLU
  # the remaining element-wise work (LayerNorm, softmax, adds) is ~3% here.
  c = tiny_config(hidden=64, **overrides)
  c.model.bert.intermediate_size = 256
  c.model.bert.hidden_act = "relu"
  b = random_batch(c, 4)
  model = hammer.create_model(c, VIDEO_DIM, SUBTITLE_DIM)
  params = jax.eval_shape(lambda r: hammer.init_random_params(model, r, b), jax.random.PRNGKey(0))
  xla = jax.jit(lambda p, x: model.apply(p, x)).lower(params, b).compile().cost_analysis()["flops"]
  ours = flops.flops_per_example(c, VIDEO_DIM, SUBTITLE_DIM)
  ratio = xla / (4 * ours["forward"])
  assert 1.0 <= ratio < 1.10, ratio
  assert ours["train_step"] == 3 * ours["forward"]


def test_minilm_text_branches_equal_bert_first_layers():
  from hammer_jax.bert import BertModel
  from hammer_jax.bert_checkpoint import load_bert_checkpoint
  c = tiny_config(max_frames=8, clip_len=4, max_query_len=12, subtitles=False)
  c.model.text_checkpoint = "minilm"
  b = random_batch(c, 2)
  tokens = np.array([[101, 1037, 2158, 7365, 2006, 1996, 3345, 102, 0, 0, 0, 0],
                     [101, 2016, 2003, 5870, 102, 0, 0, 0, 0, 0, 0, 0]], np.int32)
  mask = (tokens > 0).astype(np.int32)
  model = hammer.create_model(c, VIDEO_DIM, SUBTITLE_DIM)
  assert model.config.bert.hidden_size == 384 and model.config.bert.num_heads == 12
  b = dict(b, query_ids=tokens, query_mask=mask)
  params = hammer.init_params(model, c, jax.random.PRNGKey(0), b)
  parts = model.apply(params, tokens, mask, method=Hammer.encode_query)
  bert_cfg, ckpt = load_bert_checkpoint("minilm", num_layers=5)
  _, layers = BertModel(bert_cfg, 5).apply({"params": ckpt}, tokens, mask)
  real = mask > 0
  for key in ("frame_text", "clip_text"):
    np.testing.assert_allclose(np.asarray(parts[key])[real], np.asarray(layers[-1])[real], atol=2e-5, err_msg=key)
  # The random init must really have been replaced (random params would be far off).
  random = hammer.init_random_params(model, jax.random.PRNGKey(0), b)
  assert not np.allclose(random["params"]["embeddings"]["word_embeddings"]["embedding"][:5],
                         params["params"]["embeddings"]["word_embeddings"]["embedding"][:5])


def test_tiny_model_overfits_one_batch():
  c = tiny_config(dropout_rate=0.0)
  b = random_batch(c, 4, seed=5)
  model, params = _build(c, b)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    def loss_fn(p):
      return losses.hammer_loss(model.apply(p, b), b, c.loss)
    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, terms

  history = []
  for _ in range(150):
    params, state, terms = step(params, state)
    history.append({k: float(terms[k]) for k in ("vr", "tl", "mlm")})
  first, last = history[0], history[-1]
  for key in ("vr", "tl", "mlm"):
    assert last[key] < 0.3 * first[key], (key, first[key], last[key])
