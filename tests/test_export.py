"""Packed ternary weights in freeze, and anacuda.export: GGUF (TQ2_0 / TQ1_0), Hugging Face
BitNet safetensors and ONNX (QDQ weights), each read back by its own project's reader."""

import ast
import io
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import anacuda
from anacuda import Quantizer
from references.experiments import core as C
from anacuda.export.packing import pack2, unpack2
from anacuda.nn import ANAConv2d, ANALinear, FrozenConv, FrozenLinear, HardQuantizer, convert, freeze
from anacuda.nn.freeze import level_index


def _absmean(w, per_row=False):
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True) if per_row else w.abs().mean()


def set_eps(layer, per_row=False):
    """A fixed eps from the weight: absmean per tensor (BitNet b1.58) or per output row."""
    with torch.no_grad():
        layer.eps = _absmean(layer.weight.detach().float(), per_row)


# --- 2-bit packing (SPEC §10) --------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001])
def test_pack2_round_trips_and_has_the_documented_layout(n):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(0, 4, (n,), generator=g, dtype=torch.uint8)
    packed = pack2(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 4)
    assert torch.equal(unpack2(packed, (n,)), codes)
    for i in range(n):  # code i in byte i // 4, bits 2·(i % 4) and up
        assert (int(packed[i // 4]) >> (2 * (i % 4))) & 3 == int(codes[i])
    shaped = codes[: n - n % 3].reshape(-1, 3)
    assert torch.equal(unpack2(pack2(shaped), shaped.shape), shaped)


def test_pack2_rejects_bad_codes():
    with pytest.raises(ValueError, match="0…3"):
        pack2(torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer"):
        pack2(torch.tensor([0.0, 1.0]))


# --- freeze: packed storage and .weight ----------------------------------------------------------
def _ternary_mlp_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(ANAConv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), ANALinear(8 * 16, 10))
    model(torch.randn(4, 3, 4, 4))
    return model.eval()


def test_freeze_packs_ternary_weights_at_2_bits_and_unpacks_bit_for_bit():
    model = _ternary_mlp_cnn()
    frozen = freeze(model)
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(frozen(x), model(x))
    for q, f in ((model[0], frozen[0]), (model[3], frozen[3])):
        n = q.weight.numel()
        assert "codes" not in f.state_dict() and f.packed.dtype == torch.uint8 and f.packed.numel() == math.ceil(n / 4)
        assert f.codes.shape == q.weight.shape and f.codes.dtype == torch.uint8
        # ternary: code = level + 1, and unpacking gives the eval-mode weight bit for bit
        assert torch.equal(f.codes.long() - 1, (q.quantized_weight() / q.weight_eps()).round().long())
        assert torch.equal(f.weight, q.quantized_weight()) and f.weight.shape == q.weight.shape
    ep = torch.export.export(frozen, (x,))
    assert torch.equal(ep.module()(x), model(x))


def test_a_checkpoint_frozen_before_packing_still_loads_exactly():
    """Frozen state dicts saved before packing hold uint8 `codes`: they load into today's packed layers."""
    model = _ternary_mlp_cnn()
    frozen = freeze(model)
    old = {k: v.clone() for k, v in frozen.state_dict().items()}
    for name in ("0", "3"):
        old[f"{name}.codes"] = getattr(frozen, name).codes.clone()
        del old[f"{name}.packed"]
    fresh = freeze(_ternary_mlp_cnn())
    fresh.load_state_dict(old)
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(fresh(x), frozen(x))
    assert torch.equal(fresh[0].packed, frozen[0].packed)


def test_frozen_weight_is_read_only_and_larger_grids_keep_integer_codes():
    model = _ternary_mlp_cnn()
    frozen = freeze(model)
    with pytest.raises(AttributeError):
        frozen[3].weight = torch.zeros(10, 128)
    with pytest.raises(KeyError, match="already exists"):
        frozen[3].weight = nn.Parameter(torch.zeros(10, 128))
    for levels, stored in ((4, "packed"), (16, "codes")):  # 2 bits up to four levels
        q = convert(nn.Sequential(nn.Linear(5, 3)), weight_quantizer=Quantizer.uniform(int(math.log2(levels))))
        f = freeze(q.eval())
        assert stored in f[0].state_dict() and torch.equal(f[0].weight, q[0].quantized_weight())
        assert isinstance(f[0], FrozenLinear)


def test_packed_state_dict_size():
    """Memory and file size of a 1024 x 1024 ternary Linear: float32, uint8 codes, 2-bit codes."""
    torch.manual_seed(0)
    layer = ANALinear(1024, 1024, bias=False, eps=1.0)
    set_eps(layer)
    frozen = freeze(nn.Sequential(layer))[0]

    def saved(sd):
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.tell()

    sizes = {"float32": saved({"weight": layer.weight.detach()}),
             "uint8 codes": saved({"codes": frozen.codes, "levels": frozen.levels, "eps": frozen.eps}),
             "2-bit packed": saved(frozen.state_dict())}
    print("\nstate_dict file size of a 1024x1024 ternary Linear:",
          ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()))
    assert frozen.packed.numel() == 1024 * 1024 // 4
    assert sizes["2-bit packed"] < 1.01 * 1024 * 1024 / 4 + 4096 < sizes["uint8 codes"] / 3.9
    assert sizes["uint8 codes"] < sizes["float32"] / 3.9


# --- HardQuantizer without searchsorted ----------------------------------------------------------
def _searchsorted_quantizer(hq, x):
    """HardQuantizer's forward before it lost searchsorted (the reference of the comparison form)."""
    u = x / hq.eps - hq.mu
    y = hq.eps * hq.levels[torch.searchsorted(hq.thresholds, u.contiguous(), right=True)]
    return torch.where(torch.isnan(u), u, y)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 15, 16, 255])
def test_level_index_is_searchsorted_bit_for_bit(k):
    g = torch.Generator().manual_seed(k)
    th = torch.sort(torch.randn(k, generator=g) * 3).values
    u = torch.cat([torch.randn(5000, generator=g) * 4, th, torch.nextafter(th, th - 1), torch.nextafter(th, th + 1),
                   torch.tensor([math.inf, -math.inf, 0.0, -0.0])])
    assert torch.equal(level_index(th, u), torch.searchsorted(th, u, right=True))
    assert int(level_index(th, torch.tensor([math.nan]))) == 0


def test_hard_quantizer_comparisons_equal_the_searchsorted_form_and_export_without_it():
    torch.manual_seed(0)
    q = Quantizer([-0.7, -0.1, 0.3, 1.9], [-0.45, 0.1, 1.2])  # non-integer levels, arbitrary thresholds
    act = anacuda.nn.ANAActivation(q, eps=0.37, mu=0.05).eval()
    hq = HardQuantizer(act)
    ties = (hq.thresholds + hq.mu) * hq.eps
    x = torch.cat([torch.randn(10000) * 2, ties, torch.tensor([math.nan, math.inf, -math.inf])])
    y = hq(x)
    assert torch.equal(y.nan_to_num(7.0), _searchsorted_quantizer(hq, x).nan_to_num(7.0))
    assert torch.equal(y.nan_to_num(7.0), act(x).nan_to_num(7.0))
    ep = torch.export.export(nn.Sequential(hq), (x,))
    assert not any("searchsorted" in str(n.target) for n in ep.graph.nodes)


# --- shared fixtures: a tiny ternary transformer -------------------------------------------------
def tiny_llama(per_row=()):
    """transformers' Llama (1 layer, hidden 256) with ternary Linear layers (lm_head in float), eps
    the absmean of each weight: per tensor, or per output row for the layers named in per_row."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    model = convert(transformers.LlamaForCausalLM(cfg), activations=None, weight_eps=1.0, skip=["lm_head"])
    for name, m in model.named_modules():
        if isinstance(m, ANALinear):
            set_eps(m, per_row=name.split(".")[-1] in per_row)
    return freeze(model)


# --- GGUF ----------------------------------------------------------------------------------------
F16_REL = 2.0 ** -11  # float16's unit roundoff: |fp16(eps) - eps| <= 2^-11 eps in its normal range


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_gguf_reads_back_equal_up_to_the_fp16_block_scale(tmp_path, qtype):
    gguf = pytest.importorskip("gguf")
    frozen = tiny_llama(per_row=("gate_proj", "up_proj", "down_proj"))
    path = anacuda.export(frozen, tmp_path / "m.gguf", format="gguf", qtype=qtype)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    layers = [(n, m) for n, m in frozen.named_modules() if isinstance(m, FrozenLinear)]
    assert len(layers) == 7
    worst = 0.0
    for name, m in layers:
        t = tensors[f"{name}.weight"]
        assert t.tensor_type == gguf.GGMLQuantizationType[qtype]
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        assert t.data.nbytes == m.weight.numel() // block * size  # 66 or 54 bytes per 256 weights
        deq = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        w = m.weight
        eps_row = m.eps.expand_as(w)
        # the trits exactly; each non-zero weight is ±fp16(eps), within 2^-11 of the frozen one
        assert torch.equal(torch.sign(deq), torch.sign(w)) and deq.shape == w.shape
        assert torch.equal(deq.abs()[w != 0], eps_row.half().float()[w != 0])
        err = ((deq - w).abs() / eps_row).max().item()
        assert err <= F16_REL
        worst = max(worst, err)
    print(f"\nGGUF {qtype}: worst |dequantised - frozen| / eps = {worst:.3g} (bound 2^-11 = {F16_REL:.3g}); "
          f"file {path.stat().st_size / 1024:.0f} KiB")
    for key, value in frozen.state_dict().items():  # the rest (norms, embeddings, lm_head) as it is
        if key in tensors:
            got = torch.from_numpy(np.array(tensors[key].data)).reshape(value.shape)
            assert torch.equal(got, value), key
    assert "lm_head.weight" in tensors and "model.layers.0.self_attn.q_proj.packed" not in tensors


def test_gguf_tq2_0_block_layout_is_llama_cpp_s(tmp_path):
    """ggml-common.h: block_tq2_0 { uint8_t qs[QK_K/4]; ggml_half d; }, weight j·128 + i·32 + l in
    bits 2i of qs[j·32 + l]."""
    gguf = pytest.importorskip("gguf")
    frozen = tiny_llama()
    m = frozen.model.layers[0].self_attn.q_proj
    path = anacuda.export(frozen, tmp_path / "m.gguf", format="gguf")
    t = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}["model.layers.0.self_attn.q_proj.weight"]
    codes = m.codes.reshape(-1, 2, 4, 32).numpy()  # (block, j, i, l)
    qs = np.zeros((codes.shape[0], 2, 32), np.uint8)
    for i in range(4):
        qs |= codes[:, :, i, :] << (2 * i)
    d = np.broadcast_to(m.eps.numpy().astype(np.float16).reshape(-1, 1), (256, 1)).reshape(-1, 1)
    expected = np.concatenate([qs.reshape(-1, 64), d.view(np.uint8).reshape(-1, 2)], axis=1)
    assert np.array_equal(np.asarray(t.data).reshape(-1, 66), expected)


def test_gguf_refuses_what_it_cannot_hold(tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"

    def frozen_linear(in_features=256, quantizer=None, eps=None):
        layer = ANALinear(in_features, 4, quantizer=quantizer, eps=1.0)
        set_eps(layer)
        if eps is not None:
            layer.eps = eps
        return freeze(nn.Sequential(layer))

    with pytest.raises(ValueError, match="in_features = 100; TQ2_0 needs a multiple of 256"):
        anacuda.export(frozen_linear(100), out, format="gguf")
    with pytest.raises(ValueError, match="varying within an output row"):
        anacuda.export(frozen_linear(eps=torch.rand(1, 256) + 0.5), out, format="gguf")
    with pytest.raises(ValueError, match="ternary weights only"):
        anacuda.export(frozen_linear(quantizer=Quantizer.uniform(4)), out, format="gguf")
    with pytest.raises(ValueError, match="float16"):
        anacuda.export(frozen_linear(eps=torch.tensor(1e-6)), out, format="gguf")
    with pytest.raises(ValueError, match="Linear layers only"):
        anacuda.export(freeze(_ternary_mlp_cnn()), out, format="gguf")
    with pytest.raises(ValueError, match="qtype must be one of"):
        anacuda.export(frozen_linear(), out, format="gguf", qtype="Q4_0")
    with pytest.raises(ValueError, match="at most 63 bytes"):
        anacuda.export(frozen_linear(), out, format="gguf", names=lambda k: "x" * 64)


# --- Hugging Face BitNet -------------------------------------------------------------------------
@pytest.fixture
def eager_transformers():
    """transformers' BitNet helpers are torch.compile'd; run their Python eagerly (compiling
    them with Inductor takes ~15 s on 2 cores and computes the same integers)."""
    with torch._dynamo.config.patch(disable=True):
        yield


def test_hf_bitnet_unpacks_with_transformers_to_the_frozen_weight(tmp_path, eager_transformers):
    st = pytest.importorskip("safetensors.torch")
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    frozen = tiny_llama()
    layers = [(n, m) for n, m in frozen.named_modules() if isinstance(m, FrozenLinear)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no activation quantisers here, so nothing to warn about
        anacuda.export(frozen, tmp_path / "auto.safetensors", format="hf-bitnet")
    anacuda.export(frozen, tmp_path / "bit.safetensors", format="hf-bitnet", linear_class="bitlinear")
    auto, bit = st.load_file(tmp_path / "auto.safetensors"), st.load_file(tmp_path / "bit.safetensors")
    worst = 0.0
    for name, m in layers:
        packed = auto[f"{name}.weight"]
        assert packed.dtype == torch.uint8 and packed.shape == (m.weight_shape[0] // 4, m.weight_shape[1])
        # transformers' own unpacking gives the frozen trits; its own packing gives the same bytes
        trits = bitnet.unpack_weights(packed, dtype=torch.float32)
        assert torch.equal(trits, m.codes.float() - 1)
        assert torch.equal(bitnet.pack_weights(m.codes.float() - 1), packed)
        # autobitlinear: output · weight_scale, weight_scale = eps, exact
        assert torch.equal(trits * auto[f"{name}.weight_scale"], m.weight)
        # bitlinear: output / weight_scale, weight_scale = float32(1 / eps), one rounding
        scale = bit[f"{name}.weight_scale"]
        assert torch.equal(scale, 1 / m.eps.reshape(1)) and torch.equal(bit[f"{name}.weight"], packed)
        worst = max(worst, ((trits / scale - m.weight).abs() / m.eps).max().item())
    assert worst <= 2.0 ** -23
    print(f"\nhf-bitnet bitlinear: worst |trits / weight_scale - frozen| / eps = {worst:.3g}")


def test_hf_bitnet_loads_with_from_pretrained(tmp_path, eager_transformers):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' BitNet loader requires it
    frozen = tiny_llama()
    for linear_class, cls in (("autobitlinear", "AutoBitLinear"), ("bitlinear", "BitLinear")):
        anacuda.export(frozen, tmp_path / linear_class, format="hf-bitnet", linear_class=linear_class)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / linear_class, dtype=torch.float32)
        assert type(hf.lm_head) is nn.Linear and torch.equal(hf.lm_head.weight, frozen.lm_head.weight)
        for name, m in frozen.named_modules():
            if isinstance(m, FrozenLinear):
                h = hf.get_submodule(name)
                assert type(h).__name__ == cls
                if linear_class == "autobitlinear":  # the loader unpacked the weight itself
                    assert torch.equal(h.weight * h.weight_scale, m.weight)
                else:
                    from transformers.integrations.bitnet import unpack_weights

                    assert torch.equal(unpack_weights(h.weight, torch.float32), m.codes.float() - 1)
                    assert torch.equal(h.weight_scale, 1 / m.eps.reshape(1))
        assert hf(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_hf_bitnet_refuses_what_it_cannot_hold(tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="one scale per tensor"):
        anacuda.export(tiny_llama(per_row=("q_proj",)), out, format="hf-bitnet")
    layer = ANALinear(8, 6, eps=0.5)
    with pytest.raises(ValueError, match="out_features = 6; .* multiple of 4"):
        anacuda.export(freeze(nn.Sequential(layer)), out, format="hf-bitnet")
    with pytest.raises(ValueError, match="ternary weights only"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, quantizer=Quantizer.binary(), eps=0.5))), out,
                       format="hf-bitnet")
    with pytest.raises(ValueError, match="linear_class must be one of"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, eps=0.5))), out, format="hf-bitnet", linear_class="x")
    with pytest.warns(UserWarning, match="activation quantisers .* not part of the format"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, eps=0.5), anacuda.nn.ANAActivation())), out,
                       format="hf-bitnet")


# --- ONNX ----------------------------------------------------------------------------------------
def _scope(node):
    meta = {p.key: p.value for p in node.metadata_props}
    return ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[-2]


def _run_onnx(path, x):
    """ONNX Runtime's outputs: the logits, every DequantizeLinear output (by layer) and every
    HardQuantizer output (in graph order, with its module name)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    weights = {n.input[0].removesuffix(".weight_q"): n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    isnan = {n.output[0] for n in nodes if n.op_type == "IsNaN"}
    acts = [(_scope(n), n.output[0]) for n in nodes if n.op_type == "Where" and n.input[0] in isnan]
    known = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    extra = list(weights.values()) + [name for _, name in acts]
    model.graph.output.extend(known[name] for name in extra)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x.numpy()})))
    logits = out[model.graph.output[0].name]
    return (torch.from_numpy(logits), {k: torch.from_numpy(out[v]) for k, v in weights.items()},
            [(s, torch.from_numpy(out[v])) for s, v in acts], model)


def _torch_run(frozen, x, last):
    """The frozen model's logits, its HardQuantizers' outputs in call order, and the input of `last`."""
    acts, seen = [], {}

    def keep_input(module, inputs, output):
        seen["x"] = inputs[0]

    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.append((n, o))) for n, m in frozen.named_modules()
             if isinstance(m, HardQuantizer)]
    hooks.append(frozen.get_submodule(last).register_forward_hook(keep_input))
    with torch.no_grad():
        y = frozen(x)
    for h in hooks:
        h.remove()
    return y, acts, seen["x"]


def _check_onnx(frozen, path, x, last):
    """ONNX Runtime computes the frozen network: the same dequantised weights and the same
    quantised activations bit for bit; the logits differ only by the summation order of the
    final float Linear, bounded by 2·γ_n·(|W||a| + |b|), γ_n = n·u / (1 − n·u), u = 2^-24."""
    y_ort, w_ort, a_ort, model = _run_onnx(path, x)
    y, a_pt, a_last = _torch_run(frozen, x, last)
    frozen_layers = {n: m for n, m in frozen.named_modules() if isinstance(m, (FrozenLinear, FrozenConv))}
    assert set(w_ort) == set(frozen_layers) and len(frozen_layers) > 0
    for name, m in frozen_layers.items():
        assert torch.equal(w_ort[name], m.weight), name
    init = {i.name: i for i in model.graph.initializer}
    assert all(init[f"{n}.weight_q"].data_type == 3 for n in frozen_layers)  # INT8 storage
    assert [s for s, _ in a_ort] == [n for n, _ in a_pt] and len(a_pt) > 0
    for (name, got), (_, want) in zip(a_ort, a_pt):
        assert torch.equal(got, want), name
    fc = frozen.get_submodule(last)
    n = fc.in_features + 1
    gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
    bound = 2 * gamma * (a_last.double().abs() @ fc.weight.double().abs().T + fc.bias.double().abs())
    diff = (y_ort.double() - y.double()).abs()
    assert (diff <= bound).all()
    assert torch.equal(y_ort.argmax(1), y.argmax(1))
    return diff.max().item(), (diff == 0).double().mean().item()


def test_onnx_demo_model_runs_in_onnxruntime_as_frozen(tmp_path):
    pytest.importorskip("onnxscript")
    data = C.load_digits()
    float_model = C.train_float(data, width=8, epochs=2, lr=3e-3, batch_size=64, seed=0, device="cpu")
    cfg = C.RunConfig(method="ana", init="float", epochs=2, lr=1e-3, width=8, seed=0)
    model, ctrl = C.build_quantised(cfg, float_model)
    C.train(model, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, controller=ctrl)
    frozen = freeze(model)
    path = anacuda.export(frozen, tmp_path / "demo.onnx", format="onnx", example_inputs=data.x_test[:2])
    worst, exact = _check_onnx(frozen, path, data.x_test, "fc")
    print(f"\nONNX demo model on {len(data.x_test)} digits: quantised activations and weights bit-equal; "
          f"logits max |diff| {worst:.3g}, {100 * exact:.0f} % bit-equal (float Linear summation order)")


def test_onnx_resnet18_runs_in_onnxruntime_as_frozen(tmp_path):
    pytest.importorskip("onnxscript")
    tv = pytest.importorskip("torchvision")
    data = C.load_digits()
    digits = nn.functional.interpolate(data.x_test[:32], size=32).repeat(1, 3, 1, 1)  # 3 x 32 x 32
    torch.manual_seed(0)
    model = convert(tv.models.resnet18(num_classes=10), skip=["conv1", "fc"])
    with torch.no_grad():
        model(nn.functional.interpolate(data.x_train[:64], size=32).repeat(1, 3, 1, 1))  # BN statistics
    frozen = freeze(model.eval())
    path = anacuda.export(frozen, tmp_path / "resnet18.onnx", format="onnx", example_inputs=digits[:2])
    worst, exact = _check_onnx(frozen, path, digits, "fc")
    print(f"\nONNX ResNet-18: {path.stat().st_size / 2 ** 20:.1f} MiB (float32 weights "
          f"{sum(p.numel() for p in model.parameters()) * 4 / 2 ** 20:.1f} MiB); logits max |diff| {worst:.3g}")


def test_onnx_uint8_levels_8bit_activations_and_per_tensor_eps(tmp_path):
    """Levels 0…255 are stored as uint8; 255 activation thresholds go through the comparisons."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = nn.Sequential(anacuda.nn.ANAActivation(Quantizer.uniform(8), eps=0.02),
                          ANALinear(16, 4, quantizer=Quantizer.uniform(8, signed=False), eps=0.004))
    frozen = freeze(model.eval())
    x = torch.randn(64, 16)
    path = anacuda.export(frozen, tmp_path / "u8.onnx", format="onnx", example_inputs=x[:2])
    _, w_ort, a_ort, onnx_model = _run_onnx(path, x)
    assert {i.name: i.data_type for i in onnx_model.graph.initializer}["1.weight_q"] == 2  # UINT8
    assert torch.equal(w_ort["1"], frozen[1].weight) and torch.equal(a_ort[0][1], frozen[0](x))


def test_onnx_refuses_what_it_cannot_hold(tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "m.onnx"
    x = torch.randn(2, 8)
    q = Quantizer([-0.5, 0.25, 1.0], [0.0, 0.5])
    with pytest.raises(ValueError, match="DequantizeLinear holds integer levels"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, quantizer=q, eps=0.5))), out, format="onnx",
                       example_inputs=x)
    with pytest.raises(ValueError, match="needs example_inputs"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, eps=0.5))), out, format="onnx")
    with pytest.raises(ValueError, match="varying within an output row"):
        anacuda.export(freeze(nn.Sequential(ANALinear(8, 4, eps=torch.rand(1, 8) + 0.5))), out, format="onnx",
                       example_inputs=x)


# --- the one command -------------------------------------------------------------------------------
def test_export_errors(tmp_path, monkeypatch):
    frozen = freeze(nn.Sequential(ANALinear(256, 4, eps=0.5)))
    with pytest.raises(ValueError, match="format must be one of"):
        anacuda.export(frozen, tmp_path / "m", format="tflite")
    with pytest.raises(ValueError, match="not frozen .* anacuda.freeze"):
        anacuda.export(nn.Sequential(ANALinear(256, 4, eps=0.5)), tmp_path / "m.gguf", format="gguf")
    with pytest.raises(ValueError, match="no frozen anacuda layers"):
        anacuda.export(nn.Linear(2, 2), tmp_path / "m.onnx", format="onnx", example_inputs=torch.randn(1, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        anacuda.export(42, tmp_path / "m.gguf", format="gguf")
    with pytest.raises(TypeError, match="path must be"):
        anacuda.export(frozen, 42, format="gguf")
    for module, fmt in (("gguf", "gguf"), ("safetensors", "hf-bitnet"), ("onnxscript", "onnx")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        monkeypatch.setitem(sys.modules, f"{module}.torch", None)
        with pytest.raises(ImportError, match=f"pip install {module}"):
            anacuda.export(frozen, tmp_path / "m", format=fmt, **({"example_inputs": torch.randn(1, 256)}
                                                                  if fmt == "onnx" else {}))
