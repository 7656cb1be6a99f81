"""anacuda.freeze and anacuda.export of transformers converted with recipe="bitnet":
TernaryLinear / BitLinear -> FrozenTernaryLinear, TernaryMultiheadAttention's in-projection ->
FrozenProjection, the per-token input quantiser -> HardTokenQuantizer; GGUF, hf-bitnet and ONNX."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import anacuda
from anacuda import Quantizer
from anacuda.export.packing import unpack2
from anacuda.nn import BitLinear, TernaryLinear, TernaryMultiheadAttention, freeze
from anacuda.nn.freeze import FrozenProjection, FrozenTernaryLinear, HardTokenQuantizer
from anacuda.nn.ternary import DynamicScaleANA

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def train(model, loss, steps=3, lr=1e-2):
    opt = torch.optim.AdamW(model.parameters(), lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    return model.eval()


def equal_nan(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def round_trip(frozen, fresh):
    """The frozen state_dict saved and loaded into `fresh` (the same model frozen before training)."""
    buf = io.BytesIO()
    torch.save(frozen.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    a, b = frozen.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    return fresh


# --- the per-token input quantiser ---------------------------------------------------------------
def token_inputs(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 9, 40, dtype=torch.float64) * torch.logspace(-6, 3, 9, dtype=torch.float64)[:, None]
    x[0, 0] = 0.0  # an all-zero token: eps = r_min / 127, output 0
    x[0, 1, :5] = torch.tensor([float("nan"), 1.0, -1.0, 2.0, 0.0])  # NaN: the token has no scale
    x[0, 2, 3] = float("inf")
    x[0, 3, 7] = -float("inf")
    # max |x| = 127 gives eps = 1: every k + 1/2 sits on a threshold (SPEC §1: goes up), and just below
    x[1, 0, :] = torch.arange(-20, 20, dtype=torch.float64) + 0.5
    x[1, 0, 0] = 127.0
    x[1, 1, :] = torch.nextafter(x[1, 0, :], torch.tensor(-1e9, dtype=torch.float64))
    x[1, 1, 0] = 127.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits, mu", [(8, 0.0), (4, 0.0), (8, 0.3)])
def test_hard_token_quantizer_is_the_op_in_eval_bit_for_bit(dtype, bits, mu):
    live = DynamicScaleANA("absmax_per_token", Quantizer.uniform(bits, signed=True), sigma=0.4, mu=mu).eval()
    frozen = HardTokenQuantizer(live)
    x = token_inputs(dtype)
    with torch.no_grad():
        want, got = live(x), frozen(x)
    assert got.dtype == want.dtype == dtype and equal_nan(got, want)
    assert torch.isnan(got[0, 1]).all() and torch.isnan(got[0, 2]).all() and (got[0, 0] == 0).all()
    assert not torch.isnan(got[1:]).any()
    if dtype == torch.float64 and mu == 0 and bits == 8:  # on a threshold: the upper level; below it: the lower
        assert torch.equal(got[1, 0, 1:], x[1, 0, 1:] + 0.5) and torch.equal(got[1, 1, 1:], x[1, 0, 1:] - 0.5)


def test_hard_token_quantizer_refuses_other_rules():
    with pytest.raises(ValueError, match="absmax_per_token"):
        HardTokenQuantizer(DynamicScaleANA("absmean", Quantizer.ternary()))


# --- TernaryLinear / BitLinear -------------------------------------------------------------------
LAYERS = {
    "bitlinear": lambda: BitLinear(64, 24),
    "bitlinear_blend": lambda: BitLinear(64, 24, blend=True),
    "ana_per_channel": lambda: TernaryLinear(64, 24, weight_scale="absmean_per_channel", strategy="expectation"),
    "ana_absmax_norm": lambda: TernaryLinear(64, 24, weight_scale="absmax", norm=True),
    "ana_absmax_per_channel_no_input": lambda: TernaryLinear(64, 24, weight_scale="absmax_per_channel",
                                                             activation_bits=None),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_frozen_ternary_linear_equals_the_layer_in_eval_and_stores_2_bits(kind):
    torch.manual_seed(1)
    layer = LAYERS[kind]()
    if layer.norm is not None:
        nn.init.uniform_(layer.norm.weight, 0.5, 1.5)
    x = torch.randn(3, 7, 64) * 3
    train(nn.Sequential(layer), lambda m: m(x).square().mean())
    frozen = freeze(nn.Sequential(layer))
    f = frozen[0]
    assert type(f) is FrozenTernaryLinear and f.training is False
    assert (f.input_quant is None) == (layer.input_quant is None) and (f.norm is None) == (layer.norm is None)
    with torch.no_grad():
        assert torch.equal(frozen(x), layer(x))
        # the trits of the op's eval-mode weight, at 2 bits each, and eps = the op's scale of the trained weight
        wq = layer.weight_quant(layer.weight)
        eps = torch.ops.anacuda._dynamic_eps(layer.weight, layer.weight_quant.rule, 1.0, 1e-5)
    assert torch.equal(f.eps, eps) and torch.equal(f.weight, wq)
    assert torch.equal(unpack2(f.packed, f.weight_shape).float() - 1, torch.round(wq / eps))
    sd = frozen.state_dict()
    assert sd["0.packed"].dtype == torch.uint8 and sd["0.packed"].numel() == 64 * 24 // 4
    assert not any(k.endswith("weight") and v.numel() == 64 * 24 for k, v in sd.items())
    round_trip(frozen, freeze(nn.Sequential(LAYERS[kind]())))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_frozen_ternary_linear_in_other_dtypes_and_with_mu(dtype):
    """eps in the op's compute dtype (float32 for half types), the weight cast back as the op
    casts it; μ ≠ 0 (a NoiseController's) on both quantisers."""
    torch.manual_seed(0)
    layer = TernaryLinear(64, 16, dtype=dtype, norm=True, weight_scale="absmean_per_channel")
    layer.weight_quant.mu.fill_(0.2)
    layer.input_quant.mu.fill_(-0.1)
    model = nn.Sequential(layer).eval()
    frozen = freeze(model)
    x = (torch.randn(3, 5, 64) * 4).to(dtype)
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))
    assert frozen[0].weight.dtype == dtype and frozen[0].eps.dtype == (dtype if dtype == torch.float64 else
                                                                          torch.float32)


def test_a_standalone_per_token_quantiser_is_frozen_and_other_rules_stay_live():
    model = nn.Sequential(DynamicScaleANA("absmax_per_token"), DynamicScaleANA("absmax", Quantizer.ternary()))
    frozen = freeze(model)
    assert type(frozen[0]) is HardTokenQuantizer and type(frozen[1]) is DynamicScaleANA
    with pytest.raises(ValueError, match=r"layer '1' is a DynamicScaleANA with the rule 'absmax'"):
        anacuda.export(frozen, "unused.gguf", format="gguf")


# --- converted transformers ----------------------------------------------------------------------
def _gpt2(n_embd=32, seed=4):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=n_embd, n_layer=2, n_head=2)
    return anacuda.convert(transformers.GPT2LMHeadModel(cfg), recipe="bitnet")


def _llama(hidden=32, seed=5, **options):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=32)
    return anacuda.convert(transformers.LlamaForCausalLM(cfg), **options)


def _trained(build, ids):
    return train(build(), lambda m: m(ids, labels=ids).loss)


MODELS = {
    "gpt2_bitnet": lambda: _gpt2(),
    "llama_bitnet_ana": lambda: _llama(recipe="bitnet_ana", strategy="expectation"),
    "llama_bitnet_norm": lambda: _llama(recipe="bitnet", linear_options=dict(norm=True)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_frozen_transformer_equals_eval_bit_for_bit_and_round_trips(kind):
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    q = _trained(MODELS[kind], ids)
    frozen = freeze(q)
    layers = [m for m in frozen.modules() if isinstance(m, FrozenTernaryLinear)]
    assert len(layers) == 8 if kind.startswith("gpt2") else 14
    assert not any(isinstance(m, (TernaryLinear, DynamicScaleANA)) for m in frozen.modules())
    with torch.no_grad():
        want = q(ids).logits
        assert torch.equal(frozen(ids).logits, want)
        fresh = round_trip(frozen, freeze(MODELS[kind]()))
        assert torch.equal(fresh(ids).logits, want)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, dtype=torch.float64)
    return anacuda.convert(nn.TransformerEncoder(layer, 2, enable_nested_tensor=True), recipe="bitnet")


@pytest.mark.parametrize("grad", [True, False])
def test_frozen_encoder_freezes_the_in_projection_and_equals_eval(grad):
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    q = train(_encoder(), lambda m: m(x).square().mean())
    frozen = freeze(q)
    sa = frozen.layers[0].self_attn
    assert type(sa) is TernaryMultiheadAttention and type(sa.in_proj_quant) is FrozenProjection
    assert sa.in_proj_weight is None and type(sa.out_proj) is FrozenTernaryLinear
    sd = frozen.state_dict()
    assert "layers.0.self_attn.in_proj_weight" not in sd
    assert sd["layers.0.self_attn.in_proj_quant.packed"].numel() == 48 * 16 // 4
    # Under no_grad in eval, torch's fused encoder paths stay off. With grad enabled, the live
    # model's parameters must not require grad either: scaled_dot_product_attention picks its CPU
    # kernel by requires_grad (the results differ by ~1e-16 in float64, before any freezing).
    q.requires_grad_(False)
    with torch.set_grad_enabled(grad):
        assert torch.equal(frozen(x), q(x))
        live_w = q.layers[0].self_attn.in_proj_quant.weight_quant(q.layers[0].self_attn.in_proj_weight)
        assert torch.equal(sa.in_proj_quant.weight, live_w)
        fresh = round_trip(frozen, freeze(_encoder()))
        assert torch.equal(fresh(x), q(x))


def test_frozen_attention_with_separate_q_k_v_projections():
    torch.manual_seed(2)
    mha = TernaryMultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True, linear=BitLinear)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 6, 8), torch.randn(2, 6, 12)
    frozen = freeze(nn.ModuleDict({"a": mha}))["a"]
    assert all(type(getattr(frozen, f"{p}_proj_quant")) is FrozenProjection for p in "qkv")
    assert all(getattr(frozen, f"{p}_proj_weight") is None for p in "qkv")
    mha.eval()
    with torch.no_grad():
        (a, wa), (b, wb) = mha(q, k, v), frozen(q, k, v)
    assert torch.equal(a, b) and torch.equal(wa, wb)


# --- export --------------------------------------------------------------------------------------
def test_export_refuses_a_converted_model_that_is_not_frozen(tmp_path):
    with pytest.raises(ValueError, match=r"not frozen .* first 'transformer.h.0.attn.c_attn', a BitLinear"):
        anacuda.export(_gpt2(), tmp_path / "m.gguf", format="gguf")
    with pytest.raises(ValueError, match=r"not frozen \(24 training layers, first 'layers.0.self_attn.out_proj', "
                                         r"a BitLinear\)"):
        anacuda.export(_encoder(), tmp_path / "m.safetensors", format="hf-bitnet")


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_gguf_of_a_converted_gpt2_reads_back(tmp_path, qtype):
    gguf = pytest.importorskip("gguf")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    frozen = freeze(_trained(lambda: _gpt2(n_embd=256), ids))
    path = anacuda.export(frozen, tmp_path / "m.gguf", format="gguf", qtype=qtype)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    layers = [(n, m) for n, m in frozen.named_modules() if isinstance(m, FrozenTernaryLinear)]
    assert len(layers) == 8
    for name, m in layers:
        t = tensors[f"{name}.weight"]
        assert t.tensor_type == gguf.GGMLQuantizationType[qtype]
        deq = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        w = m.weight
        assert deq.shape == w.shape and torch.equal(torch.sign(deq), torch.sign(w))  # the trits exactly
        assert torch.equal(deq.abs()[w != 0], m.eps.expand_as(w).half().float()[w != 0])  # d = fp16(eps)
    for key, value in frozen.state_dict().items():  # biases, norms, the input quantisers' buffers as they are
        if key in tensors:
            assert torch.equal(torch.from_numpy(np.array(tensors[key].data)).reshape(value.shape), value), key
    assert "transformer.h.0.attn.c_attn.bias" in tensors and "transformer.h.0.attn.c_attn.packed" not in tensors


def test_gguf_per_channel_scales_and_the_encoder_in_projection(tmp_path):
    gguf = pytest.importorskip("gguf")
    model = nn.Sequential(TernaryLinear(256, 8, weight_scale="absmean_per_channel"))
    x = torch.randn(2, 3, 256)
    frozen = freeze(train(model, lambda m: m(x).square().mean()))
    t = {t.name: t for t in gguf.GGUFReader(str(anacuda.export(frozen, tmp_path / "a.gguf", format="gguf"))).tensors}
    deq = torch.from_numpy(gguf.quants.dequantize(t["0.weight"].data, t["0.weight"].tensor_type).copy())
    assert torch.equal(deq, (frozen[0].codes.float() - 1) * frozen[0].eps.half().float())  # one d per row
    assert frozen[0].eps.unique().numel() == 8
    # TernaryMultiheadAttention's in-projection is a weight matrix too, written as <name>.weight
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 4, 256, dropout=0.0, batch_first=True), 1,
                                enable_nested_tensor=False)
    frozen = freeze(anacuda.convert(enc, recipe="bitnet"))
    t = {t.name: t for t in gguf.GGUFReader(str(anacuda.export(frozen, tmp_path / "b.gguf", format="gguf"))).tensors}
    proj = frozen.layers[0].self_attn.in_proj_quant
    deq = gguf.quants.dequantize(t["layers.0.self_attn.in_proj_quant.weight"].data, gguf.GGMLQuantizationType.TQ2_0)
    assert torch.equal(torch.from_numpy(deq.copy()), (proj.codes.float() - 1) * proj.eps.half().float())
    with pytest.raises(ValueError, match=r"layer 'layers.0.self_attn.out_proj' has in_features = 16"):
        anacuda.export(freeze(_encoder()), tmp_path / "c.gguf", format="gguf")


@pytest.fixture
def eager_transformers():
    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.mark.parametrize("norm", [False, True])
def test_hf_bitnet_of_a_converted_llama_loads_with_from_pretrained(tmp_path, eager_transformers, norm):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    frozen = freeze(_trained(lambda: _llama(recipe="bitnet", linear_options=dict(norm=norm)), ids))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 8-bit per-token input quantisers are the format's own
        anacuda.export(frozen, tmp_path / "m", format="hf-bitnet")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    layers = [(n, m) for n, m in frozen.named_modules() if isinstance(m, FrozenTernaryLinear)]
    assert len(layers) == 14
    for name, m in layers:
        h = hf.get_submodule(name)
        assert type(h).__name__ == "AutoBitLinear"
        assert torch.equal(h.weight * h.weight_scale, m.weight)  # the loader unpacked the trits; eps exactly
        assert (h.rms_norm is None) == (not norm)
        if norm:
            assert torch.equal(h.rms_norm.weight, m.norm.weight)
            assert h.rms_norm.variance_epsilon == torch.finfo(torch.float32).eps
    assert torch.equal(hf.lm_head.weight, frozen.lm_head.weight)
    with torch.no_grad():  # transformers' own activation quantiser rounds half to even and multiplies by 1/eps
        assert hf(ids).logits.argmax(-1).eq(frozen(ids).logits.argmax(-1)).float().mean() > 0.9


def test_hf_bitnet_refuses_input_quantisers_and_norms_it_cannot_hold(tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=r"layer '0' quantises its input on 16 levels"):
        anacuda.export(freeze(nn.Sequential(TernaryLinear(8, 4, activation_bits=4))), out, format="hf-bitnet")
    with pytest.raises(ValueError, match=r"layer '0' has an RMSNorm and layer '1' none"):
        anacuda.export(freeze(nn.Sequential(BitLinear(8, 8), BitLinear(8, 4, norm=False))), out, format="hf-bitnet")
    with pytest.raises(ValueError, match=r"layer '0' has eps of shape \(4, 1\) with different values"):
        anacuda.export(freeze(nn.Sequential(BitLinear(8, 4, weight_scale="absmax_per_channel"))), out,
                       format="hf-bitnet")
    with pytest.warns(UserWarning, match=r"1 activation quantisers \(first '1'\) are not part of the format"):
        anacuda.export(freeze(nn.Sequential(BitLinear(8, 4), DynamicScaleANA())), out, format="hf-bitnet")
    with pytest.warns(UserWarning, match=r"layer '0' has no input quantiser"):
        anacuda.export(freeze(nn.Sequential(TernaryLinear(8, 4, activation_bits=None))), out, format="hf-bitnet")


def _onnx_run(path, x):
    """ONNX Runtime's output, and the outputs of the input quantisers (the Where that puts NaN back
    after the comparisons, in an input_quant's scope), in graph order; the number of
    DequantizeLinear weights."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    isnan = {n.output[0] for n in nodes if n.op_type == "IsNaN"}
    acts = [n.output[0] for n in nodes if n.op_type == "Where" and n.input[0] in isnan and "input_quant" in
            {p.key: p.value for p in n.metadata_props}.get("pkg.torch.onnx.name_scopes", "")]
    known = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(known[a] for a in acts)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
    return out[0], out[1:], sum(n.op_type == "DequantizeLinear" for n in nodes)


class _Logits(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):
        return self.m(ids, use_cache=False).logits


def _onnx_gpt2():
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return _Logits(freeze(_trained(_gpt2, ids))), ids


def _onnx_encoder():
    x = torch.randn(3, 5, 16)
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False)
    return freeze(train(anacuda.convert(enc, recipe="bitnet"), lambda m: m(x).square().mean())), x


@pytest.mark.parametrize("kind", ["gpt2", "encoder"])
def test_onnx_of_a_converted_transformer_runs_in_onnxruntime_as_frozen(tmp_path, kind):
    pytest.importorskip("onnxscript")
    frozen, x = (_onnx_gpt2 if kind == "gpt2" else _onnx_encoder)()
    n_weights = 8
    path = anacuda.export(frozen, tmp_path / "m.onnx", format="onnx", example_inputs=x, dynamic_batch=False)
    got, acts, dq = _onnx_run(path, x)
    assert dq == n_weights  # every ternary weight (the encoder's in-projections included) as int8 + scale
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in frozen.modules()
             if isinstance(m, HardTokenQuantizer)]
    with torch.no_grad():
        want = frozen(x)
    for h in hooks:
        h.remove()
    # ONNX Runtime computes the float maths around the quantisers (norms, attention) in another
    # order, so the quantisers' inputs, and some of their rounding, differ; each on its own is bit
    # for bit the frozen one (the next test)
    assert len(acts) == len(seen) == n_weights
    assert torch.equal(acts[0], seen[0])
    for a, b in zip(acts, seen):
        torch.testing.assert_close(a, b, rtol=0, atol=1.01 * b.abs().amax(-1, keepdim=True).max().item() / 127)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_onnx_of_a_frozen_ternary_linear_is_bit_for_bit(tmp_path):
    pytest.importorskip("onnxscript")
    """The input quantiser in ONNX Runtime: bit for bit (NaN / inf tokens, ties on thresholds,
    all-zero tokens included); the weight as int8 trits + per-row scale."""
    layer = nn.Sequential(TernaryLinear(40, 8, weight_scale="absmean_per_channel")).eval()
    frozen = freeze(layer)
    x = token_inputs(torch.float32)
    path = anacuda.export(frozen, tmp_path / "m.onnx", format="onnx", example_inputs=x)
    got, (act,), dq = _onnx_run(path, x)
    with torch.no_grad():
        assert equal_nan(act, frozen[0].input_quant(x)) and equal_nan(act, layer[0].input_quant(x))
        want = frozen(x)
    assert dq == 1 and torch.equal(torch.isnan(got), torch.isnan(want))
    # the matmul in another summation order: within 2·γ_n·(|a||W| + |b|), γ_n = n·u / (1 − n·u), u = 2^-24
    fc, n = frozen[0], 41
    gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
    bound = 2 * gamma * (act.double().abs() @ fc.weight.double().abs().T + fc.bias.double().abs())
    ok = torch.isnan(want) | ((got.double() - want.double()).abs() <= bound)
    assert ok.all()
