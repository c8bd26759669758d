"""The real-language learning test's config: `configs/tvr.py:recommended` with a small random text model.

The settings under test are the `recommended` variant's (rates, hard negatives,
dual encoder, loss balance); the shapes are a suite's: 64 feature rows in clips
of 16 (as the benchmark's CPU budget), a two-layer 64-wide BERT trained from
scratch at 1e-3 (its word embeddings are the only word knowledge it has, as the
linear reference's bag of words), batch 16. tests/test_learning_real_language.py
passes the prepared folder and the step count on the command line.
"""

from configs import tvr


def get_config(arg: str = ""):
  c = tvr.get_config("recommended" + ("," + arg if arg else ""))
  c.data.max_frames = 64
  c.data.clip_len = 16
  c.data.max_mlm_predictions = 3
  c.model.text_checkpoint = None
  c.model.bert = dict(vocab_size=30522, hidden_size=64, num_heads=4, intermediate_size=128,
                      max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12)
  c.model.text_layers = 2
  c.model.dropout_rate = 0.0
  c.optim.batch_size = 16
  c.optim.lr = 1e-3
  # The head at the rate of the rest: at 1e-3 `recommended`'s 10x would be 1e-2, and a text model trained
  # from scratch at 1e-3 learns its words fast without it.
  c.optim.dual_encoder_lr_multiplier = 1.0
  c.optim.num_steps = 400
  c.eval.batch_size = 32
  c.eval.every_steps = 0
  c.eval.final_eval = True
  c.log_every_steps = 50
  c.log_objective_grad_norms = False
  c.checkpoint_every_steps = 100000
  return c
