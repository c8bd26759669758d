"""The `arg` of a config file: ablations of the paper's Tables 4-9, FLAT, and `tiny`.

`--config=configs/activitynet.py:clip=16,no_cross_modal` applies each
comma-separated item in order:

| item | meaning | paper |
|---|---|---|
| `flat` | FLAT baseline: frame encoder alone over the whole video | Tables 1-3 |
| `objectives=vr+tl+fm+cm` | which losses are on (VR, TL, frame MLM, clip MLM) | Table 4 |
| `weights=1:5:0.1` | lambda_VR : lambda_TL : lambda_MLM | Table 5 |
| `no_cross_modal` | remove the cross-modal (co-attention) layers | Table 6 |
| `clip=32` | clip length M | Table 7 |
| `share_encoders` | frame and clip encoders share weights | Table 8 |
| `no_clip_position` | no clip position embedding | Table 9 |
| `bf16` | bfloat16 compute, float32 parameters | - |
| `two_stage` | train the dual-encoder head too and evaluate two-stage (first stage + HAMMER re-rank) | - |
| `recommended` | the settings to start a new run with (docs/training_dynamics.md) | - |
| `tiny` | a tiny random-init model on a tiny synthetic corpus (tests) | - |

An unknown item is an error.
"""

OBJECTIVES = {"vr": "use_vr", "tl": "use_tl", "fm": "use_frame_mlm", "cm": "use_clip_mlm"}


def demo_corpus(c, *, num_train_videos: int, num_val_videos: int):
  """The demo's synthetic corpus and the shapes that fit it (configs/demo.py and `tiny`).

  Durations fit max_frames (16 rows of 1.5 s = 24 s): longer videos would be
  truncated and ~40% of the ground-truth moments (with the concepts the query
  names) cut off. Widths >= 55 concepts give orthonormal concept directions.
  """
  c.data.source = "synthetic"
  c.data.prepared_dir = ""
  c.data.synthetic = dict(seed=0, num_train_videos=num_train_videos, num_val_videos=num_val_videos,
                          num_test_videos=num_val_videos, queries_per_video=5, visual_dim=64, subtitle_dim=64,
                          min_duration=9.0, max_duration=24.0)
  c.data.max_frames = 16
  c.data.max_query_len = 12
  c.data.clip_len = 4
  c.data.num_negatives = 2
  c.model.dropout_rate = 0.0


def _tiny(c):
  demo_corpus(c, num_train_videos=40, num_val_videos=12)
  c.data.max_mlm_predictions = 3
  c.data.shuffle_buffer = 16
  c.model.text_checkpoint = None
  c.model.bert = dict(vocab_size=30522, hidden_size=32, num_heads=2, intermediate_size=64,
                      max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12)
  c.model.text_layers = 2
  c.optim.batch_size = 8
  c.optim.lr = 1e-3
  c.optim.decay_boundaries = (0.5, 0.75)
  c.optim.num_steps = 20
  c.eval.batch_size = 8
  c.eval.every_steps = 10
  c.eval.max_queries_during_training = 24
  c.eval.top_k_videos = 5
  c.eval.final_eval = False
  # Four extra backward passes per logged step; tests log every step (the diagnostic has its own test).
  c.log_objective_grad_norms = False
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10


def _recommended(c):
  """What a new run should start with: each item measured on the real-language benchmark
  (benchmarks/real_language_benchmark.py; docs/training_dynamics.md, docs/reproducing.md)."""
  c.optim.lr = 1e-4                      # one rate, held until 90% of training
  c.optim.decay_boundaries = (0.9, 0.95)
  c.loss.use_dual_encoder = True         # the first stage, and the miner of hard negatives
  c.data.negatives = "hard"              # VR negatives: the batch's videos the first stage ranks highest
  c.loss.frame_loss_reduction = "mean"   # TL's frame term on the clip terms' scale, so VR is not drowned
  c.model.vr_first_stage_residual = True  # f(v, h) starts from the first stage's word-level match
  c.optim.dual_encoder_lr_multiplier = 10.0  # the shallow head learns words 10x faster (1e-3)


def apply_variants(c, arg: str):
  """Applies the comma-separated variant items of `arg` to config `c` in place."""
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, _, value = item.partition("=")
    if key == "flat":
      c.model.flat = True
    elif key == "objectives":
      names = value.split("+")
      unknown = [n for n in names if n not in OBJECTIVES]
      if unknown or not names:
        raise ValueError(f"objectives: unknown {unknown}; choose from {'+'.join(OBJECTIVES)}")
      for name, field in OBJECTIVES.items():
        c.loss[field] = name in names
    elif key == "weights":
      vr, tl, mlm = (float(x) for x in value.split(":"))
      c.loss.vr_weight, c.loss.tl_weight, c.loss.mlm_weight = vr, tl, mlm
    elif key == "no_cross_modal":
      c.model.cross_modal = False
    elif key == "clip":
      c.data.clip_len = int(value)
    elif key == "share_encoders":
      c.model.share_encoders = True
    elif key == "no_clip_position":
      c.model.clip_position_embedding = False
    elif key == "bf16":
      c.model.dtype = "bfloat16"
    elif key == "two_stage":
      c.loss.use_dual_encoder = True
      c.eval.retrieval = "two_stage"
    elif key == "recommended":
      _recommended(c)
    elif key == "tiny":
      _tiny(c)
    else:
      raise ValueError(f"unknown config variant {item!r}; see configs/variants.py")
  if c.data.max_frames % c.data.clip_len:
    raise ValueError(f"max_frames {c.data.max_frames} is not a multiple of clip_len {c.data.clip_len}")
  return c
