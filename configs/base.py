"""Every field of a HAMMER config, once, with its default: the paper's settings for TVR.

The defaults are the paper's TVR run (supplement 6.1.4: batch 128, max LR 2e-4,
96 frames of 1.5 s, visual + subtitle streams; the loss weights of Table 5) and
the readings of the paper this project fixed (each marked "choice"). Dataset
configs change only what differs: `configs/tvr.py` nothing, `configs/activitynet.py`
ActivityNet's values, `configs/demo.py` the demo's; then they apply the variant
named by their `arg` (configs/variants.py: ablations of Tables 4-9, FLAT, tiny).
A saved workdir config is read back over these defaults (`run_config.load_config`).
`max_frames`, `max_query_len` and `clip_len` are `FieldReference`s so that the
data and the model can never disagree about them.
"""

import ml_collections
from ml_collections import config_dict

from hammer_jax.errors import HammerError


class ConfigError(HammerError, ValueError):
  """A configuration that cannot run, found before anything heavy starts (one line)."""


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A workdir to start from (its latest checkpoint's parameters, wherever this
  # model has a parameter of the same name and shape; the rest start fresh), e.g.
  # to add the dual-encoder head to a trained model (docs/two_stage.md). "": none.
  c.init_from = ""

  max_frames = config_dict.FieldReference(96)
  max_query_len = config_dict.FieldReference(30)
  clip_len = config_dict.FieldReference(16)

  c.data = ml_collections.ConfigDict()
  c.data.source = "tvr"               # "tvr" | "activitynet"; also names prepared data's layout
  c.data.prepared_dir = ""            # Output folder of data_prep (holds prepared.json).
  c.data.train_split = "train"
  c.data.eval_split = "val"
  c.data.max_frames = max_frames      # F: videos padded/truncated to this many feature rows
  c.data.max_query_len = max_query_len  # L: query tokens incl. [CLS] and [SEP]
  c.data.clip_len = clip_len          # M: frames per clip (Table 7)
  c.data.num_negatives = 3            # VR negatives per query, drawn from the batch (choice)
  # "random": drawn uniformly from the batch's other videos (the paper's reading);
  # "hard": the batch's videos the dual-encoder first stage scores highest (needs
  # loss.use_dual_encoder; docs/training_dynamics.md). Not in the paper.
  c.data.negatives = "random"
  c.data.mlm_probability = 0.15
  c.data.max_mlm_predictions = 5      # P: BERT's max_predictions_per_seq, scaled to L=30
  c.data.mlm_seed = 1
  c.data.shuffle_buffer = 256         # in examples (queries); features are shared per video
  c.data.use_subtitles = True         # ignored when the data has none
  c.data.num_readers = 0              # training streams making up the global batch; 0: one per process.
                                      # The same count gives the same batches on any number of processes.
  c.data.synthetic = ml_collections.ConfigDict()  # make_synthetic_corpus kwargs (source "synthetic")

  c.model = ml_collections.ConfigDict()
  c.model.text_checkpoint = "minilm"  # folder of a HF BERT checkpoint, "minilm", or None (random, uses .bert)
  c.model.bert = ml_collections.ConfigDict(dict(  # only used when text_checkpoint is None
      vocab_size=30522, hidden_size=384, num_heads=12, intermediate_size=1536,
      max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
      hidden_act="gelu"))             # "gelu" (exact erf, as HF) | "gelu_new" | "relu"
  c.model.text_layers = 5             # first K BERT layers per text branch
  c.model.video_layers = 1
  c.model.cross_modal = True          # Table 6
  c.model.clip_len = clip_len
  c.model.max_frames = max_frames
  c.model.max_query_len = max_query_len
  c.model.share_encoders = False      # Table 8
  c.model.clip_position_embedding = True  # Table 9
  c.model.frame_position = "in_clip"  # "in_clip" (choice) | "absolute"
  c.model.flat = False                # FLAT baseline: frame encoder alone over the whole video
  c.model.new_layer_init_std = 0.0    # init std of layers trained from scratch; 0: 1/sqrt(d) (choice)
  c.model.dropout_rate = 0.1
  c.model.dtype = "float32"           # compute dtype: "float32" | "bfloat16" (params stay float32)
  c.model.dual_encoder_dim = 256      # first-stage vectors (with loss.use_dual_encoder; not in the paper)
  # f(v, h) per clip: theta . Psi(phi_k) (the paper, Eq. 9) or that plus the
  # dual-encoder head's clip score (needs loss.use_dual_encoder; not in the paper).
  c.model.vr_first_stage_residual = False
  c.model.decoding = "greedy"         # "greedy" (section 3.5) | "joint" (arg-max over start <= end)

  c.loss = ml_collections.ConfigDict()
  c.loss.vr_weight = 1.0              # Eq. 14, Table 5's best
  c.loss.tl_weight = 5.0
  c.loss.mlm_weight = 0.1
  c.loss.use_vr = True                # Table 4 switches
  c.loss.use_tl = True
  c.loss.use_frame_mlm = True
  c.loss.use_clip_mlm = True
  c.loss.use_dual_encoder = False     # dual-encoder head + in-batch contrastive loss (dual_encoder.py); paper: off
  c.loss.dual_encoder_weight = 1.0
  c.loss.frame_loss_reduction = "sum"  # frame-wise B/E/O CE: "sum" over frames (Eq. 6) | "mean" (choice)

  c.optim = ml_collections.ConfigDict()
  c.optim.batch_size = 128            # global
  c.optim.lr = 2e-4                   # max LR
  c.optim.num_steps = 20000
  c.optim.warmup_fraction = 0.1       # linear 0 -> lr over the first 10%
  c.optim.decay_boundaries = (0.5, 0.75)  # fractions of training where LR drops
  c.optim.decay_factors = (0.1, 0.01)      # ... to these multiples of the max LR
  c.optim.new_layer_lr_multiplier = 1.0  # rate of layers trained from scratch / lr (1 = paper)
  c.optim.dual_encoder_lr_multiplier = 1.0  # the dual-encoder head's rate / the new layers' (not in the paper)
  c.optim.word_embedding_lr_multiplier = 1.0  # the word-embedding table's rate / lr (not in the paper)
  c.optim.grad_clip_norm = 0.0        # 0 = off
  c.optim.weight_decay = 0.0          # 0 = plain Adam as the paper
  # "adam" (the paper) | "sgd": plain SGD, for tests that compare runs element by element (Adam
  # scales the rounding noise of a flat direction's gradient to a full step; SGD keeps it at lr x noise).
  c.optim.optimizer = "adam"
  c.optim.train_only = ""             # "": train everything; "dual_encoder": only that head, the rest frozen

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64
  c.eval.top_k_videos = 100
  # "exhaustive": HAMMER scores every corpus video (the paper); "two_stage": the
  # dual-encoder first stage's top `first_stage_candidates` videos only (needs
  # loss.use_dual_encoder; retrieval/retrieve.py). Not in the paper.
  c.eval.retrieval = "exhaustive"
  c.eval.first_stage_candidates = 20   # K: BENCHMARKS.md, "Two-stage retrieval" (recall curve, speed, metrics)
  c.eval.first_stage_index = "auto"    # FAISS index kind (retrieval/first_stage.py)
  c.eval.every_steps = 2000
  c.eval.max_queries_during_training = 500
  c.eval.final_eval = False           # evaluate the whole eval split after training (the demo does)
  c.eval.val_loss_batches = 4         # batches of the eval split for the periodic validation loss

  c.log_every_steps = 50
  c.log_objective_grad_norms = True   # per-objective gradient norms on logged steps (one backward each)
  c.checkpoint_every_steps = 1000
  c.max_checkpoints_to_keep = 3
  return c
