"""Decoding start/end log-scores into moments (decoding.py)."""

import itertools

import jax
import numpy as np
import pytest

from hammer_jax import decoding


def _random_case(rng, b=64, f=12):
  start = rng.normal(size=(b, f)).astype(np.float32) * 3
  end = rng.normal(size=(b, f)).astype(np.float32) * 3
  lengths = rng.integers(1, f + 1, size=b)
  mask = (np.arange(f)[None] < lengths[:, None]).astype(np.int32)
  # Padded frames carry the model's very negative scores, sometimes garbage instead.
  start[mask == 0] = np.where(rng.random((mask == 0).sum()) < 0.5, -1e9, 50.0)
  end[mask == 0] = np.where(rng.random((mask == 0).sum()) < 0.5, -1e9, 50.0)
  return start, end, mask, lengths


def test_greedy_never_ends_before_it_starts_and_follows_section_3_5():
  rng = np.random.default_rng(0)
  greedy = jax.jit(decoding.greedy_decode)
  for _ in range(20):  # 20 x 64 random cases
    start, end, mask, lengths = _random_case(rng)
    s, e, score = jax.device_get(greedy(start, end, mask))
    assert np.all(e >= s)
    assert np.all(e < lengths) and np.all(s < lengths)  # never a padded frame
    for i in range(len(s)):
      n = lengths[i]
      want_s = int(np.argmax(start[i, :n]))
      want_e = want_s + int(np.argmax(end[i, want_s:n]))
      assert (s[i], e[i]) == (want_s, want_e)
      np.testing.assert_allclose(score[i], start[i, want_s] + end[i, want_e], rtol=1e-6)


def test_greedy_with_no_real_frame_still_returns_an_ordered_pair():
  s, e, _ = decoding.greedy_decode(np.zeros((1, 5)), np.arange(5.0)[None, ::-1], np.zeros((1, 5)))
  assert int(e[0]) >= int(s[0])


def test_joint_finds_the_best_pair_by_brute_force():
  rng = np.random.default_rng(1)
  start, end, mask, lengths = _random_case(rng, b=64, f=10)
  s, e, score = jax.device_get(jax.jit(decoding.joint_decode)(start, end, mask))
  for i in range(len(s)):
    n = lengths[i]
    best = max(((start[i, a] + end[i, z], a, z) for a, z in itertools.product(range(n), repeat=2) if a <= z))
    assert (s[i], e[i]) == best[1:]
    np.testing.assert_allclose(score[i], best[0], rtol=1e-6)
  # A case where greedy and joint differ: greedy's start leaves only a bad end.
  st = np.array([[0.0, 5.0, 4.9]]); en = np.array([[10.0, -10.0, 0.0]]); mk = np.ones((1, 3))
  assert tuple(int(x[0]) for x in decoding.greedy_decode(st, en, mk)[:2]) == (1, 2)
  assert tuple(int(x[0]) for x in decoding.joint_decode(st, en, mk)[:2]) == (0, 0)
  assert tuple(int(x[0]) for x in decoding.decode(st, en, mk, "joint")[:2]) == (0, 0)
  with pytest.raises(ValueError):
    decoding.decode(st, en, mk, "beam")


def test_top_moments_are_sorted_valid_pairs_led_by_the_joint_best():
  rng = np.random.default_rng(2)
  start, end, mask, lengths = _random_case(rng, b=16, f=8)
  s, e, sc = jax.device_get(decoding.top_moments(start, end, mask, k=5, max_length=4))
  assert s.shape == e.shape == sc.shape == (16, 5)
  assert np.all(np.diff(sc, axis=1) <= 0)
  real = sc > -1e29
  assert np.all((e >= s)[real]) and np.all((e - s < 4)[real]) and np.all((e < lengths[:, None])[real])
  js, je, jsc = decoding.joint_decode(start, end, mask, max_length=4)
  np.testing.assert_array_equal(s[:, 0], js)
  np.testing.assert_array_equal(e[:, 0], je)


def test_frames_to_seconds():
  st, ed = decoding.frames_to_seconds(np.array([0, 3, 10]), np.array([1, 3, 12]),
                                      np.array([1.5, 1.5, 2.0]), np.array([60.0, 60.0, 21.0]))
  np.testing.assert_allclose(st, [0.0, 4.5, 20.0])
  np.testing.assert_allclose(ed, [3.0, 6.0, 21.0])  # last one clipped to the duration
  st2, ed2 = decoding.frames_to_seconds(np.array([[0, 2]]), np.array([[0, 5]]), np.array([1.5]), np.array([6.0]))
  np.testing.assert_allclose(st2, [[0.0, 3.0]])
  np.testing.assert_allclose(ed2, [[1.5, 6.0]])
