"""anacuda.convert's transformer recipes (recipe="bitnet" / "bitnet_ana") on torch.nn's
TransformerEncoder / DecoderLayer and MultiheadAttention, a hand-written GPT, and Hugging Face
GPT-2 and Llama built from small configs (nothing is downloaded)."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import anacuda
from anacuda.nn import BitLinear, NoiseController, TernaryLinear, TernaryMultiheadAttention
from conftest import bitnet_activation_quant as aq, bitnet_weight_quant as wq

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def train(model, batches, steps=8, lr=1e-2):
    """Losses of `steps` AdamW steps on the same batch; batches() -> loss."""
    opt = torch.optim.AdamW(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        loss = batches(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_frozen_equals_eval(qmodel, *args):
    frozen = anacuda.freeze(qmodel)
    qmodel.eval()
    with torch.no_grad():
        a, b = qmodel(*args), frozen(*args)
    a, b = (getattr(t, "logits", t) for t in (a, b))
    assert torch.equal(a, b)


# --- torch.nn: TransformerEncoder, its fast paths, MultiheadAttention, DecoderLayer -------------------


def explicit_encoder_layer(layer, x):
    """The post-norm ReLU encoder layer (batch_first) written out with BitNet's quantisers on the
    input and weight of every projection: what the converted layer must compute."""
    sa = layer.self_attn
    B, L, E = x.shape
    H = sa.num_heads

    def lin(t, w, b):
        return F.linear(aq(t), wq(w), b)

    def heads(t):
        return t.reshape(B, L, H, E // H).transpose(1, 2)

    q, k, v = (heads(t) for t in lin(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E // H), -1) @ v
    x = layer.norm1(x + lin(att.transpose(1, 2).reshape(B, L, E), sa.out_proj.weight, sa.out_proj.bias))
    h = lin(x, layer.linear1.weight, layer.linear1.bias).relu()
    return layer.norm2(x + lin(h, layer.linear2.weight, layer.linear2.bias))


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, dtype=torch.float64)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)


@pytest.mark.parametrize("mode", ["train", "eval_no_grad"])
def test_encoder_computes_the_quantised_layers_not_float(encoder, mode):
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    q, report = anacuda.convert(encoder, recipe="bitnet", report=True)
    assert type(q.layers[0].self_attn) is TernaryMultiheadAttention
    assert all(type(m) is BitLinear for m in (q.layers[0].linear1, q.layers[1].linear2, q.layers[0].self_attn.out_proj))
    expected = x
    for layer in q.layers:
        expected = explicit_encoder_layer(layer, expected)
    if mode == "train":
        got, floats = q.train()(x), encoder.train()(x)
    else:  # torch's fused encoder kernel would run here, in float, were it not switched off
        with torch.no_grad():
            got, floats = q.eval()(x), encoder.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (got - floats).abs().max() > 1e-2


def test_encoder_padding_mask_takes_no_nested_fast_path(encoder):
    """TransformerEncoder turns a padded batch into a nested tensor for its fused kernels in eval
    under no_grad; converted, it runs the quantised layers, as with gradients on."""
    q = anacuda.convert(encoder, recipe="bitnet").eval()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        a = q(x, src_key_padding_mask=pad)
    torch.testing.assert_close(a, q(x, src_key_padding_mask=pad), rtol=1e-12, atol=1e-12)
    assert not q.use_nested_tensor and q.layers[0].activation_relu_or_gelu == 0
    assert encoder.use_nested_tensor  # the original is untouched


def test_encoder_report_freeze_and_training(encoder):
    q, report = anacuda.convert(encoder, recipe="bitnet_ana", report=True)
    for i in range(2):
        assert report.converted[f"layers.{i}.self_attn"].startswith("MultiheadAttention -> TernaryMultiheadAttention")
        assert report.converted[f"layers.{i}.linear1"] == "Linear -> TernaryLinear"
        assert report.converted[f"layers.{i}.linear2"] == "Linear -> TernaryLinear"
        assert "normalisation" in report.kept_float[f"layers.{i}.norm1"]
        assert "relu (a function)" in report.activations_left[f"layers.{i}.activation"]
        assert f"layers.{i}.self_attn.in_proj_quant.input_quant" in report.activations_quantised
        assert f"layers.{i}.self_attn.out_proj.input_quant" in report.activations_quantised
    assert len(report.converted) == 6 and "6 converted" in str(report)
    x, y = torch.randn(4, 5, 16, dtype=torch.float64), torch.randn(4, 5, 16, dtype=torch.float64)
    losses = train(q, lambda m: F.mse_loss(m(x), y))
    assert losses[-1] < losses[0]
    assert_frozen_equals_eval(q, x)


def test_multihead_attention_standalone():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=12)  # separate q/k/v weights, sequence first
    q_in, k_in, v_in = torch.randn(5, 2, 16), torch.randn(7, 2, 8), torch.randn(7, 2, 12)
    q, report = anacuda.convert(mha, recipe="bitnet", head=None, report=True)
    assert isinstance(q, TernaryMultiheadAttention)
    assert {"q_proj_quant.input_quant", "k_proj_quant.input_quant", "v_proj_quant.input_quant",
            "out_proj.input_quant"} == set(report.activations_quantised)
    out, w = q(q_in, k_in, v_in)
    # torch's maths with the quantised weights and inputs
    ref, ref_w = F.multi_head_attention_forward(
        aq(q_in), aq(k_in), aq(v_in), 16, 4, None, mha.in_proj_bias, None, None, False, 0.0, torch.eye(16), None,
        use_separate_proj_weight=True, q_proj_weight=wq(mha.q_proj_weight), k_proj_weight=wq(mha.k_proj_weight),
        v_proj_weight=wq(mha.v_proj_weight))
    ref = F.linear(aq(ref), wq(mha.out_proj.weight), mha.out_proj.bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, ref_w)
    assert (out - mha(q_in, k_in, v_in)[0]).abs().max() > 1e-2
    out.sum().backward()
    assert q.q_proj_weight.grad is not None and q.q_proj_weight.grad.abs().sum() > 0  # the unclipped STE


def test_decoder_layer():
    torch.manual_seed(2)
    dec = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation=nn.GELU())
    q, report = anacuda.convert(dec, recipe="bitnet", report=True)
    assert {"self_attn", "multihead_attn", "linear1", "linear2"} == set(report.converted)
    assert "GELU" in report.activations_left["activation"]
    tgt, mem = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    with torch.no_grad():
        out = q.eval()(tgt, mem, tgt_mask=mask, tgt_is_causal=True)
        assert (out - dec.eval()(tgt, mem, tgt_mask=mask, tgt_is_causal=True)).abs().max() > 1e-2
    assert_frozen_equals_eval(q, tgt, mem)


# --- a hand-written GPT --------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(a)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=32, d=32, heads=2, layers=2, context=16, tied=False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def lm_loss(model, idx):
    return F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())


@pytest.mark.parametrize("tied", [False, True])
def test_hand_written_gpt(tied):
    torch.manual_seed(3)
    gpt = GPT(tied=tied)
    q, report = anacuda.convert(gpt, recipe="bitnet_ana", report=True, sigma=0.3)
    linears = [f"blocks.{i}.{n}" for i in range(2) for n in ("qkv", "proj", "mlp.0", "mlp.2")]
    assert sorted(report.converted) == sorted(linears)
    assert all(type(q.get_submodule(n)) is TernaryLinear for n in linears)
    assert q.blocks[0].qkv.weight_quant.sigma.item() == pytest.approx(0.3)
    assert "output head" in report.kept_float["head"] and type(q.head) is nn.Linear
    assert "embedding" in report.kept_float["tok"] and "embedding" in report.kept_float["pos"]
    assert "normalisation" in report.kept_float["ln"]
    assert sorted(report.activations_left) == ["blocks.0.mlp.1", "blocks.1.mlp.1"]
    assert q.head.weight is q.tok.weight if tied else q.head.weight is not q.tok.weight
    assert torch.equal(q.blocks[1].mlp[2].weight, gpt.blocks[1].mlp[2].weight)  # copied exactly
    assert torch.equal(q.blocks[1].mlp[2].bias, gpt.blocks[1].mlp[2].bias)

    idx = torch.randint(0, 32, (8, 17))
    ctl = NoiseController(q, epochs=8, groups=[[n for n, _ in anacuda.nn.quantised_modules(q)]])
    losses = []
    opt = torch.optim.AdamW(q.parameters(), 1e-2)
    for _ in range(8):
        loss = lm_loss(q, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctl.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert q.blocks[0].qkv.weight_quant.sigma.item() < 0.3  # annealed
    assert_frozen_equals_eval(q, idx[:, :-1])

    # head=None converts the head too; a tied head then shares the embedding's Parameter
    q2, report2 = anacuda.convert(gpt, recipe="bitnet", head=None, report=True)
    assert type(q2.head) is BitLinear and "head" in report2.converted
    assert (q2.head.weight is q2.tok.weight) == tied


def test_default_recipe_on_a_transformer_is_not_silent():
    """The CNN recipe leaves GELU and MultiheadAttention alone: it says so, and where to go."""
    with pytest.warns(UserWarning, match="recipe='bitnet'") as rec:
        anacuda.convert(GPT())
    assert any("blocks.0.mlp.1" in str(r.message) for r in rec)
    with pytest.warns(UserWarning) as rec:
        anacuda.convert(nn.TransformerEncoderLayer(16, 2, 32))
    msg = " ".join(str(r.message) for r in rec)
    assert "self_attn (MultiheadAttention" in msg and "'activation'" in msg


def test_what_cannot_be_converted_is_named():
    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    class Plain(nn.Linear):
        pass

    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))

    model = nn.Sequential(Plain(8, 8), OwnForward(8, 8), Raw(), nn.Linear(8, 8))
    with pytest.warns(UserWarning) as rec:
        q, report = anacuda.convert(model, recipe="bitnet", report=True)
    msg = " ".join(str(r.message) for r in rec)
    assert "1 (OwnForward)" in msg and "2 (Raw" in msg
    assert report.converted == {"0": "Plain -> BitLinear"} and "head" in report.kept_float["3"]
    assert "overrides Linear.forward" in report.kept_float["1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anacuda.convert(model, recipe="bitnet", skip=["1", "2"])  # kept in float by choice: no warning


def test_bad_arguments():
    m = GPT()
    with pytest.raises(ValueError, match="recipe"):
        anacuda.convert(m, recipe="bitnet158")
    with pytest.raises(TypeError, match="bitnet_ana"):
        anacuda.convert(m, recipe="bitnet", sigma=0.5)
    with pytest.raises(TypeError, match="activation_eps"):
        anacuda.convert(m, recipe="bitnet", activation_eps="learned")
    with pytest.raises(ValueError, match="weight_scale must be"):  # weight_eps is the layers' weight_scale
        anacuda.convert(m, recipe="bitnet", weight_eps="max_abs")
    with pytest.raises(TypeError, match="recipe"):
        anacuda.convert(m, head=None)
    with pytest.raises(ValueError, match="head"):
        anacuda.convert(m, recipe="bitnet", head="lm_head")
    with pytest.raises(ValueError, match="weight_scale"):
        anacuda.convert(m, recipe="bitnet_ana", linear_options={"weight_scale": "twn"})
    with pytest.raises(TypeError, match="linear_options"):
        anacuda.convert(m, recipe="bitnet_ana", sigma=0.1, linear_options={"sigma": 0.2})
    with pytest.raises(TypeError, match="head"):
        anacuda.convert(m, recipe="bitnet", head=3)
    with pytest.raises(TypeError, match="report"):
        anacuda.convert(m, recipe="bitnet", report="yes")


def test_default_recipe_reports_too():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    q, report = anacuda.convert(cnn, skip=["3"], report=True)
    assert report.converted == {"0": "Conv2d -> ANAConv2d", "1": "ReLU -> ANAActivation"}
    assert report.activations_quantised == {"1": "ReLU -> ANAActivation"}
    assert report.kept_float == {"3": "Linear: in skip"}
    assert isinstance(anacuda.convert(cnn), nn.Sequential)  # without report=True: the model, as before


# --- Hugging Face transformers: GPT-2 (Conv1D) and Llama, from small configs --------------------------

transformers = pytest.importorskip("transformers")


def test_hf_gpt2():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    gpt2 = transformers.GPT2LMHeadModel(cfg)
    q, report = anacuda.convert(gpt2, recipe="bitnet", report=True)
    convs = [f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                   "mlp.c_proj")]
    assert report.converted == {n: "Conv1D -> BitLinear (weight transposed)" for n in convs}
    assert "output head" in report.kept_float["lm_head"]
    assert q.lm_head.weight is q.transformer.wte.weight  # still tied, in float
    assert {"transformer.wte", "transformer.wpe", "transformer.ln_f"} <= set(report.kept_float)
    assert sorted(report.activations_left) == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert not any(isinstance(m, Conv1D) for m in q.modules())

    # A converted Conv1D computes Conv1D's x @ W + b with both quantised.
    conv, layer = gpt2.transformer.h[0].attn.c_attn, q.transformer.h[0].attn.c_attn
    assert torch.equal(layer.weight, conv.weight.t())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x), torch.addmm(conv.bias, aq(x).view(-1, 32), wq(conv.weight)).view(2, 5, 96),
                               rtol=1e-5, atol=1e-6)

    ids = torch.randint(0, 64, (4, 16))
    losses = train(q, lambda m: m(ids, labels=ids).loss)
    assert losses[-1] < losses[0]
    assert_frozen_equals_eval(q, ids)


def test_hf_llama():
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    llama = transformers.LlamaForCausalLM(cfg)
    q, report = anacuda.convert(llama, recipe="bitnet_ana", report=True, strategy="expectation")
    projs = [f"model.layers.{i}.{n}" for i in range(2) for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")]
    assert report.converted == {n: "Linear -> TernaryLinear" for n in projs}
    assert set(report.activations_quantised) == {f"{n}.input_quant" for n in projs}
    assert "output head" in report.kept_float["lm_head"] and type(q.lm_head) is nn.Linear
    assert "embedding" in report.kept_float["model.embed_tokens"]
    assert "normalisation" in report.kept_float["model.layers.0.input_layernorm"]
    assert "SiLU" in report.activations_left["model.layers.0.mlp.act_fn"]

    ids = torch.randint(0, 64, (4, 16))
    losses = train(q, lambda m: m(ids, labels=ids).loss)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        assert (q.eval()(ids).logits - llama.eval()(ids).logits).abs().max() > 1e-3
    assert_frozen_equals_eval(q, ids)
