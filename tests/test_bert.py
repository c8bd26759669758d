"""Flax BERT (hammer_jax/bert.py) and its checkpoint loader (hammer_jax/bert_checkpoint.py).

Parity is against `transformers.BertModel` outputs stored in
shared/fixtures/minilm_reference.npz; the bert.-prefixed layout is checked on a
tiny random checkpoint written here, against a hand-written numpy BERT.
"""
import dataclasses
import json
import math
import os

from helpers import SHARED_DIR
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
from safetensors.numpy import save_file

from hammer_jax.model import pretrained
from hammer_jax.model.bert import BertConfig, BertEmbeddings, BertEncoder, BertMLMHead, BertModel
from hammer_jax.model.bert_checkpoint import load_bert_checkpoint
from hammer_jax.model.pretrained import CheckpointError

FIXTURE = os.path.join(SHARED_DIR, "fixtures", "minilm_reference.npz")

# Tiny bert-base-uncased-style checkpoint: 2 layers, hidden 32.
TINY_HF_CONFIG = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 100, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    "max_position_embeddings": 40, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def minilm():
  return load_bert_checkpoint("minilm")


def _bert_params(params):
  return {"embeddings": params["embeddings"], "encoder": params["encoder"]}


def _run_bert(config, params, input_ids, mask, token_type_ids=None, dtype=jnp.float32):
  model = BertModel(config, dtype=dtype)
  # Params as jit arguments (not closure constants) so XLA does not fold 90 MB of weights.
  fn = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t))
  emb, layers = fn(_bert_params(params), input_ids, mask, token_type_ids)
  return np.asarray(emb, np.float32), [np.asarray(x, np.float32) for x in layers]


def _max_diff_where(a, b, mask):
  return float(np.abs(a - b)[mask.astype(bool)].max())


def _tiny_tensors(rng, cfg=TINY_HF_CONFIG):
  """HF BertForMaskedLM state dict (torch layout, LayerNorm gamma/beta as in bert-base-uncased)."""
  h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  t = {}

  def lin(name, n_in, n_out):
    t[f"{name}.weight"] = rng.normal(0, 0.2, (n_out, n_in)).astype(np.float32)
    t[f"{name}.bias"] = rng.normal(0, 0.1, (n_out,)).astype(np.float32)

  def ln(name):
    t[f"{name}.gamma"] = (1 + rng.normal(0, 0.1, (h,))).astype(np.float32)
    t[f"{name}.beta"] = rng.normal(0, 0.1, (h,)).astype(np.float32)

  t["bert.embeddings.word_embeddings.weight"] = rng.normal(0, 0.5, (v, h)).astype(np.float32)
  t["bert.embeddings.position_embeddings.weight"] = rng.normal(0, 0.5, (cfg["max_position_embeddings"], h)).astype(np.float32)
  t["bert.embeddings.token_type_embeddings.weight"] = rng.normal(0, 0.5, (cfg["type_vocab_size"], h)).astype(np.float32)
  ln("bert.embeddings.LayerNorm")
  for i in range(cfg["num_hidden_layers"]):
    p = f"bert.encoder.layer.{i}"
    for n in ("query", "key", "value"):
      lin(f"{p}.attention.self.{n}", h, h)
    lin(f"{p}.attention.output.dense", h, h)
    ln(f"{p}.attention.output.LayerNorm")
    lin(f"{p}.intermediate.dense", h, ff)
    lin(f"{p}.output.dense", ff, h)
    ln(f"{p}.output.LayerNorm")
  lin("bert.pooler.dense", h, h)  # Present in real checkpoints; the loader ignores it.
  lin("cls.predictions.transform.dense", h, h)
  ln("cls.predictions.transform.LayerNorm")
  t["cls.predictions.bias"] = rng.normal(0, 0.1, (v,)).astype(np.float32)
  t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"]
  lin("cls.seq_relationship", h, 2)
  return t


def _write_checkpoint(folder, tensors, cfg=TINY_HF_CONFIG):
  os.makedirs(folder, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(folder, "vocab.txt"), "w") as f:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    f.write("\n".join(specials + [f"tok{i}" for i in range(cfg["vocab_size"] - len(specials))]) + "\n")
  return str(folder)


@pytest.fixture()
def tiny(tmp_path):
  tensors = _tiny_tensors(np.random.default_rng(0))
  return _write_checkpoint(tmp_path / "tiny_bert", tensors), tensors


# numpy reference BERT (float64), written from the HF definitions.
_erf = np.vectorize(math.erf)


def _np_gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _np_ln(x, g, b, eps=1e-12):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * g + b


def _np_lin(t, name, x):
  return x @ t[f"{name}.weight"].T.astype(np.float64) + t[f"{name}.bias"]


def _np_embeddings(t, ids, types):
  p = "bert.embeddings"
  x = (t[f"{p}.word_embeddings.weight"][ids] + t[f"{p}.position_embeddings.weight"][np.arange(ids.shape[1])]
       + t[f"{p}.token_type_embeddings.weight"][types]).astype(np.float64)
  return _np_ln(x, t[f"{p}.LayerNorm.gamma"], t[f"{p}.LayerNorm.beta"])


def _np_layer(t, i, x, mask, heads):
  p = f"bert.encoder.layer.{i}"
  b, l, h = x.shape
  d = h // heads
  split = lambda y: y.reshape(b, l, heads, d).transpose(0, 2, 1, 3)
  q, k, v = (split(_np_lin(t, f"{p}.attention.self.{n}", x)) for n in ("query", "key", "value"))
  scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, h)
  a = _np_ln(_np_lin(t, f"{p}.attention.output.dense", ctx) + x,
             t[f"{p}.attention.output.LayerNorm.gamma"], t[f"{p}.attention.output.LayerNorm.beta"])
  y = _np_lin(t, f"{p}.output.dense", _np_gelu(_np_lin(t, f"{p}.intermediate.dense", a)))
  return _np_ln(y + a, t[f"{p}.output.LayerNorm.gamma"], t[f"{p}.output.LayerNorm.beta"])


def _np_mlm(t, x, table):
  p = "cls.predictions"
  y = _np_ln(_np_gelu(_np_lin(t, f"{p}.transform.dense", x)),
             t[f"{p}.transform.LayerNorm.gamma"], t[f"{p}.transform.LayerNorm.beta"])
  return y @ table.T.astype(np.float64) + t[f"{p}.bias"]


class _BertWithMLM(nn.Module):
  """Embeddings + encoder + tied MLM head, the way the HAMMER model wires them."""
  config: BertConfig

  @nn.compact
  def __call__(self, ids, mask, types):
    emb = BertEmbeddings(self.config, name="embeddings")
    x = emb(ids, types)
    x = BertEncoder(self.config, self.config.num_layers, name="encoder")(x, mask)
    return BertMLMHead(self.config, name="mlm_head")(x, emb)


def _tiny_inputs(rng, batch=2, length=7, vocab=100):
  ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 4:] = 0
  types = np.zeros((batch, length), np.int32)
  types[:, 3:] = 1
  return ids, mask, types


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)


# ---------------------------------------------------------------- 1. parity with transformers


def test_minilm_parity_six_layers(fixture, minilm):
  config, params = minilm
  assert config.num_layers == 6 and sorted(params["encoder"]) == [f"layer_{i}" for i in range(6)]
  assert "mlm_head" not in params  # all-MiniLM-L6-v2 is a bare BertModel.
  emb, layers = _run_bert(config, params, fixture["input_ids"], fixture["attention_mask"], fixture["token_type_ids"])
  assert len(layers) == 6
  mask = fixture["attention_mask"]
  for name, out in [("hidden_embeddings", emb), ("hidden_layer1", layers[0]), ("hidden_layer5", layers[4]),
                    ("hidden_layer6", layers[5])]:
    assert _max_diff_where(out, fixture[name], mask) < 1e-4, name


def test_minilm_parity_five_layers(fixture):
  config, params = load_bert_checkpoint("minilm", num_layers=5)
  assert config.num_layers == 5 and sorted(params["encoder"]) == [f"layer_{i}" for i in range(5)]
  _, layers = _run_bert(config, params, fixture["input_ids"], fixture["attention_mask"], fixture["token_type_ids"])
  assert len(layers) == 5
  assert _max_diff_where(layers[-1], fixture["hidden_layer5"], fixture["attention_mask"]) < 1e-4


# ---------------------------------------------------------------- 2. tokenizer


def test_tokenizer_reproduces_fixture_ids(fixture):
  tok = pretrained.load_tokenizer("minilm")
  enc = tok([str(s) for s in fixture["sentences"]], padding="max_length", max_length=30, truncation=True,
            return_tensors="np")
  np.testing.assert_array_equal(enc["input_ids"], fixture["input_ids"])
  np.testing.assert_array_equal(enc["attention_mask"], fixture["attention_mask"])
  np.testing.assert_array_equal(enc["token_type_ids"], fixture["token_type_ids"])


# ---------------------------------------------------------------- 3. bert.-prefixed checkpoint


def test_prefixed_checkpoint_tree_and_placement(tiny):
  folder, t = tiny
  config, params = load_bert_checkpoint(folder, num_layers=1)
  assert config == dataclasses.replace(BertConfig.from_hf_dict(TINY_HF_CONFIG), num_layers=1)
  assert sorted(params) == ["embeddings", "encoder", "mlm_head"]

  ids, mask, types = _tiny_inputs(np.random.default_rng(1))
  init = _BertWithMLM(config).init(jax.random.PRNGKey(0), ids, mask, types)["params"]
  assert jax.tree_util.tree_structure(_shapes(init)) == jax.tree_util.tree_structure(_shapes(params))
  assert _shapes(init) == _shapes(params)

  layer = params["encoder"]["layer_0"]
  np.testing.assert_array_equal(layer["attention"]["query"]["kernel"], t["bert.encoder.layer.0.attention.self.query.weight"].T)
  np.testing.assert_array_equal(layer["intermediate"]["kernel"], t["bert.encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(layer["output"]["bias"], t["bert.encoder.layer.0.output.dense.bias"])
  np.testing.assert_array_equal(layer["LayerNorm"]["scale"], t["bert.encoder.layer.0.output.LayerNorm.gamma"])
  np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"],
                                t["bert.embeddings.word_embeddings.weight"])
  head = params["mlm_head"]
  np.testing.assert_array_equal(head["transform"]["kernel"], t["cls.predictions.transform.dense.weight"].T)
  np.testing.assert_array_equal(head["transform_LayerNorm"]["bias"], t["cls.predictions.transform.LayerNorm.beta"])
  np.testing.assert_array_equal(head["bias"], t["cls.predictions.bias"])


def test_prefixed_checkpoint_forward_matches_numpy(tiny):
  folder, t = tiny
  config, params = load_bert_checkpoint(folder)  # Both layers.
  ids, mask, types = _tiny_inputs(np.random.default_rng(2))
  emb, layers = _run_bert(config, params, ids, mask, types)
  ref = _np_embeddings(t, ids, types)
  assert _max_diff_where(emb, ref, mask) < 1e-5
  for i in range(2):
    ref = _np_layer(t, i, ref, mask, config.num_heads)
    assert _max_diff_where(layers[i], ref, mask) < 1e-5, i
  logits = _BertWithMLM(config).apply({"params": params}, ids, mask, types)
  ref_logits = _np_mlm(t, ref, t["bert.embeddings.word_embeddings.weight"])
  assert _max_diff_where(np.asarray(logits), ref_logits, mask) < 1e-4


# ---------------------------------------------------------------- 4. errors


def _assert_one_line(err, *fragments):
  msg = str(err.value)
  assert "\n" not in msg, msg
  for f in fragments:
    assert f in msg, (f, msg)


def test_error_missing_folder(tmp_path):
  path = str(tmp_path / "no_such_checkpoint")
  with pytest.raises(CheckpointError) as err:
    load_bert_checkpoint(path)
  _assert_one_line(err, path, "does not exist")


def test_error_missing_weights_file(tiny):
  folder, _ = tiny
  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(CheckpointError) as err:
    load_bert_checkpoint(folder)
  _assert_one_line(err, folder, "model.safetensors")


def test_error_missing_tensor(tmp_path):
  t = _tiny_tensors(np.random.default_rng(0))
  name = "bert.encoder.layer.1.attention.self.key.weight"
  del t[name]
  folder = _write_checkpoint(tmp_path / "ckpt", t)
  load_bert_checkpoint(folder, num_layers=1)  # Layer 1 is not read, so not needed.
  with pytest.raises(CheckpointError) as err:
    load_bert_checkpoint(folder)
  _assert_one_line(err, folder, name, "missing")


def test_error_wrong_shape(tmp_path):
  t = _tiny_tensors(np.random.default_rng(0))
  name = "bert.encoder.layer.0.intermediate.dense.weight"
  t[name] = np.zeros((48, 32), np.float32)  # config.json says intermediate_size 64.
  folder = _write_checkpoint(tmp_path / "ckpt", t)
  with pytest.raises(CheckpointError) as err:
    load_bert_checkpoint(folder, num_layers=1)
  _assert_one_line(err, folder, name, "(48, 32)", "(64, 32)")


def test_error_too_many_layers(tiny):
  folder, _ = tiny
  with pytest.raises(CheckpointError) as err:
    load_bert_checkpoint(folder, num_layers=3)
  _assert_one_line(err, folder, "num_layers=3", "2 layers")


# ---------------------------------------------------------------- 5. padding invariance


def test_padding_does_not_change_valid_positions(tiny):
  config, params = load_bert_checkpoint(tiny[0])
  ids, mask, types = _tiny_inputs(np.random.default_rng(3))
  pad = 5
  ids_p = np.concatenate([ids, np.random.default_rng(4).integers(5, 100, (2, pad)).astype(np.int32)], 1)
  mask_p = np.concatenate([mask, np.zeros((2, pad), np.int32)], 1)
  types_p = np.concatenate([types, np.zeros((2, pad), np.int32)], 1)
  emb, layers = _run_bert(config, params, ids, mask, types)
  emb_p, layers_p = _run_bert(config, params, ids_p, mask_p, types_p)
  valid = mask.astype(bool)
  for a, b in zip([emb] + layers, [emb_p] + layers_p):
    np.testing.assert_allclose(b[:, :ids.shape[1]][valid], a[valid], atol=1e-5, rtol=0)
  # Guard: the padded tokens really are non-trivial inputs to the model.
  assert np.abs(layers_p[-1][:, -1] - layers_p[-1][:, 0]).max() > 1e-2


# ---------------------------------------------------------------- 6. MLM head


def test_mlm_head_is_tied_to_word_embeddings(tiny):
  folder, t = tiny
  config, params = load_bert_checkpoint(folder)
  ids, mask, types = _tiny_inputs(np.random.default_rng(5))
  model = _BertWithMLM(config)
  apply = jax.jit(lambda p: model.apply({"params": p}, ids, mask, types))
  logits = np.asarray(apply(params))
  assert logits.shape == (2, 7, config.vocab_size) and logits.dtype == np.float32

  # Hidden states fed to the head do not depend on the table at positions whose
  # token embedding we keep; so change the table only in rows no input uses.
  unused = np.setdiff1d(np.arange(config.vocab_size), ids)
  table = params["embeddings"]["word_embeddings"]["embedding"].copy()
  table[unused] = np.random.default_rng(6).normal(0, 1, (len(unused), config.hidden_size))
  changed = jax.tree_util.tree_map(lambda a: a, params)
  changed["embeddings"]["word_embeddings"]["embedding"] = table
  logits2 = np.asarray(apply(changed))

  assert np.abs(logits2[..., unused] - logits[..., unused]).min() > 0  # The decoder reads the table.
  _, layers = _run_bert(config, params, ids, mask, types)
  ref = _np_mlm(t, layers[-1].astype(np.float64), table)
  np.testing.assert_allclose(logits2, ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- 7. bfloat16 compute


def test_bfloat16_compute_close_to_float32(fixture, minilm):
  config, params = minilm
  args = (fixture["input_ids"], fixture["attention_mask"], fixture["token_type_ids"])
  emb16, layers16 = _run_bert(config, params, *args, dtype=jnp.bfloat16)
  mask = fixture["attention_mask"]
  for out, name in [(emb16, "hidden_embeddings"), (layers16[-1], "hidden_layer6")]:
    assert np.isfinite(out).all()
    diff = _max_diff_where(out, fixture[name], mask)
    assert 0 < diff < 5e-2, (name, diff)  # > 0: bf16 really was used.
  model = BertModel(config, dtype=jnp.bfloat16)
  out_dtype = jax.eval_shape(lambda p: model.apply({"params": p}, *args)[1][-1], _bert_params(params)).dtype
  assert out_dtype == jnp.bfloat16
