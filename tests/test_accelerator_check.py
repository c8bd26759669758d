"""benchmarks/accelerator_check.py --dry_run: every figure present, finite and in range.

The script runs as a user runs it (a subprocess), on one CPU device: its timing
figures mean nothing on CPU, so only their presence and ranges are checked, plus
that float32 at matmul precision "highest" agrees exactly with float32 (on CPU
both are the same float32 matmul), which checks the agreement code itself.
"""

import json
import math
import os
import subprocess
import sys

from helpers import REPO_ROOT


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_dry_run_reports_every_figure(tmp_path):
  out = tmp_path / "x.json"
  # One device (conftest's 8 would multiply the sharded compiles) and XLA's -O0
  # backend: compiling dominates a dry run on a 2-core CPU. The compile cache the
  # conftest set stays on, so a rerun is quicker still.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
             TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, os.path.join("benchmarks", "accelerator_check.py"), "--dry_run",
                         f"--out={out}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  r = json.loads(out.read_text())

  assert r["dry_run"] is True and r["devices"] == 1 and r["platform"] == "cpu"
  for key in ("device_kind", "jax_version", "peak_source"):
    assert isinstance(r[key], str) and r[key]
  assert _finite(r["peak_flops"]) and r["peak_flops"] > 0
  for name in ("device cpu", "JAX ", "steps/s", "MFU", "pairs/s", "p50", "p99", "top-10 overlap"):
    assert name in proc.stdout, name

  train = r["train"]
  assert train["dtype"] == "bfloat16" and train["batch_size"] == 8 and train["steps"] >= 1
  for key in ("step_ms", "steps_per_s", "examples_per_s", "model_flops_per_step", "xla_flops_per_step", "loss"):
    assert _finite(train[key]) and train[key] > 0, key
  assert 0 < train["mfu"] <= 1
  # flops.py counts matmuls only; XLA adds element-wise work but both see the same model.
  assert 0.3 < train["xla_flops_per_step"] / train["model_flops_per_step"] < 3

  vr = r["vr"]
  assert vr["videos"] == 16 and vr["queries"] == 8
  assert _finite(vr["pairs_per_s"]) and vr["pairs_per_s"] > 0 and vr["model_flops_per_pair"] > 0
  assert 0 < vr["mfu"] <= 1

  two = r["two_stage"]
  assert two["index_kind"] == "flat" and two["candidates"] == 16 and two["queries"] == 3
  assert all(_finite(two[k]) for k in ("p50_ms", "p99_ms", "mean_ms", "first_query_ms"))
  assert 0 < two["p50_ms"] <= two["p99_ms"]

  fractions = ("top10_overlap", "top1_agreement", "start_frame_agreement", "end_frame_agreement", "span_agreement")
  for name, a in r["agreement"].items():
    assert a["localised_pairs"] == 8 * 16, name
    assert all(0 <= a[k] <= 1 for k in fractions), (name, a)
    assert -1 <= a["vr_score_correlation"] <= 1 and a["vr_score_max_abs_diff"] >= 0 and a["vr_score_std"] > 0
  bf16 = r["agreement"]["bf16_vs_float32"]
  assert bf16["vr_score_correlation"] > 0.9  # the same params: bfloat16 moves scores, never reorders wholesale
  assert bf16["span_agreement"] <= bf16["start_frame_agreement"]
  sanity = r["agreement"]["float32_vs_float32_highest"]
  assert sanity["vr_score_max_abs_diff"] < 1e-4 and sanity["top10_overlap"] == 1 and sanity["span_agreement"] == 1
