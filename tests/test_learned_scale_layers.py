"""Learned scales in the layers (SPEC §8; anacuda/nn/learned_scale.py): LSQ's initialisation and
gradient scale, the floor, convert/freeze (eval equals frozen bit for bit), state_dict and
torch.compile without recompilation when the scales change."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import assert_equal

import anacuda
from anacuda import Quantizer
from anacuda import functional as F
from anacuda.nn.learned_scale import EPS_FLOOR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
Q4 = Quantizer.uniform(4)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _convert(model):
    return anacuda.nn.convert(model, weight_quantizer=Q4, activation_quantizer=Quantizer.uniform(3, signed=False),
                              weight_eps="learned", activation_eps="learned")


def test_weight_scale_init_and_gradient_scale():
    layer = anacuda.nn.ANAConv2d(4, 6, 3, quantizer=Q4, eps="learned")
    w = layer.weight.detach()
    assert isinstance(layer.eps, nn.Parameter) and layer.eps.shape == (6, 1, 1, 1)
    assert_equal(layer.eps.detach(), 2 * w.abs().mean((1, 2, 3), keepdim=True) / math.sqrt(7))
    x = torch.randn(2, 4, 7, 7)
    grad = torch.randn(2, 6, 5, 5)
    layer(x).backward(grad)
    # the same step through the op, without the layer: LSQ's gradient scale 1 / sqrt(N q_K)
    e = layer.eps.detach().clone().requires_grad_()
    wq = F.ana(w, Q4, "uniform", 0.0, 0.5, "mode", eps=e)
    nn.functional.conv2d(x, wq, layer.bias.detach()).backward(grad)
    torch.testing.assert_close(layer.eps.grad, e.grad / math.sqrt(w[0].numel() * 7), rtol=1e-6, atol=0)
    layer.eps_grad_scale = False
    layer.eps.grad = None
    layer(x).backward(grad)
    torch.testing.assert_close(layer.eps.grad, e.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_floor_keeps_the_scale_positive_and_learning(dtype):
    """A step that crossed 0: the op gets the floor (in float16 the dtype's smallest normal number,
    as 1e-8 rounds to 0 there), eval equals frozen, and the floor passes the gradient, so the
    parameter is trained back up rather than stuck."""
    torch.manual_seed(0)
    layer = anacuda.nn.ANALinear(4, 3, quantizer=Q4, eps="learned").to(dtype)
    with torch.no_grad():
        layer.eps[0] = -1.0
    x = torch.randn(2, 4, dtype=dtype)
    y = layer(x)
    floor = max(EPS_FLOOR, torch.finfo(dtype).tiny)
    assert torch.isfinite(y).all() and layer.weight_eps()[0].item() == torch.tensor(floor, dtype=dtype).item()
    y.sum().backward()
    assert layer.eps.grad[0].abs().item() > 0
    layer.eval()
    assert_equal(anacuda.freeze(layer)(x), layer(x))


def test_activation_scale_from_the_first_batch_and_state_dict():
    act = anacuda.nn.ANAActivation(Quantizer.uniform(3, signed=False), eps="learned")
    x = torch.rand(16, 10) * 4
    act(x)
    assert act.eps.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-6)
    first = act.eps.detach().clone()
    act(x * 10)  # no re-initialisation
    assert_equal(act.eps.detach(), first)
    fresh = anacuda.nn.ANAActivation(Quantizer.uniform(3, signed=False), eps="learned")
    fresh.load_state_dict(act.state_dict())
    fresh(x * 10)  # loaded: not re-initialised by the batch
    assert_equal(fresh.eps.detach(), first)
    with pytest.raises(TypeError, match="eps must be a number or a tensor, got str 'max_abs'"):
        anacuda.nn.ANAActivation(eps="max_abs")


def test_activation_scale_initialised_in_eval_too_and_freeze_refuses_none():
    """Eval before any training batch initialises from that batch (never eps = 1 by default);
    freeze before any batch refuses, naming the layer, rather than bake in eps = 1."""
    act = anacuda.nn.ANAActivation(Quantizer.uniform(3, signed=False), eps="learned").eval()
    with pytest.raises(ValueError, match="learned activation scale of 1 was never initialised"):
        anacuda.freeze(nn.Sequential(nn.Linear(10, 10), act))
    x = torch.rand(16, 10) * 4
    with torch.no_grad():
        y = act(x)
    assert act.eps.item() == pytest.approx(2 * x.mean().item() / math.sqrt(7), rel=1e-6)
    assert_equal(anacuda.freeze(nn.Sequential(act))(x), y)


def test_convert_train_freeze_state_dict():
    model = _model()
    qmodel = _convert(model)
    x = torch.randn(4, 3, 6, 6)
    scales = [p for n, p in qmodel.named_parameters() if n.endswith("eps")]
    assert len(scales) == 3  # conv, ReLU, linear
    conv = qmodel[0]
    assert_equal(conv.eps.detach(), 2 * model[0].weight.abs().mean((1, 2, 3), keepdim=True) / math.sqrt(7))
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        qmodel(x).square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in scales)
        opt.step()
    assert not torch.equal(conv.eps.detach(), 2 * model[0].weight.abs().mean((1, 2, 3), keepdim=True) / math.sqrt(7))
    qmodel.eval()
    frozen = anacuda.nn.freeze(qmodel)
    with torch.no_grad():
        assert_equal(frozen(x), qmodel(x))  # eval == frozen, bit for bit
    copy = _convert(_model())
    copy.load_state_dict(qmodel.state_dict())
    copy.eval()
    with torch.no_grad():
        assert_equal(copy(x), qmodel(x))
    d = qmodel.to(torch.float64)
    assert conv.eps.dtype == torch.float64 and d(x.double()).dtype == torch.float64


def test_compile_no_recompilation_when_the_scales_change():
    from torch._dynamo.testing import CompileCounter

    qmodel = _convert(_model())
    x = torch.randn(4, 3, 6, 6)
    qmodel(x)  # the activation's scale from the first batch, before compiling
    counter = CompileCounter()
    step = torch.compile(lambda inp: qmodel(inp).square().mean(), backend=counter, fullgraph=True)
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        step(x).backward()
        opt.step()  # new scales
    assert counter.frame_count == 1


@pytest.mark.parametrize("weight_scale", ["learned", "learned_per_channel"])
def test_ternary_linear_learns_its_weight_scale(weight_scale):
    """TernaryLinear / BitLinear with a learned weight scale: LSQ's initialisation from the weight
    the model (convert initialises it once it has handed the layer the model's own), the op's eps
    gradient times LSQ's gradient scale, freeze equal to eval, a loaded scale kept."""
    per_channel = weight_scale == "learned_per_channel"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.Linear(16, 4))
    qmodel = anacuda.convert(model, recipe="bitnet_ana", weight_eps=weight_scale, sigma=0.3)
    layer = qmodel[0]
    w = model[0].weight.detach()
    init = 2 * (w.abs().mean(1, keepdim=True) if per_channel else w.abs().mean().reshape(1))  # q_K = 1
    assert torch.equal(layer.weight, w)
    assert_equal(layer.weight_quant.eps.detach(), init)  # before any forward (FSDP2 keeps no forward's writes)
    x = torch.randn(2, 5, 16)
    grad = torch.randn(2, 5, 32)
    layer(x).backward(grad)
    # the same step through the op: LSQ's gradient scale 1 / sqrt(N q_K), N the weights per eps
    e = init.clone().requires_grad_()
    a = layer.input_quant(x).detach()
    wq = F.ana(w, Quantizer.ternary(), "uniform", 0.0, 0.3, "mode", eps=e)
    nn.functional.linear(a, wq, layer.bias.detach()).backward(grad)
    n = w.shape[1] if per_channel else w.numel()
    torch.testing.assert_close(layer.weight_quant.eps.grad, e.grad / math.sqrt(n), rtol=1e-5, atol=0)
    qmodel.eval()
    assert_equal(anacuda.freeze(qmodel)(x), qmodel(x))
    fresh = anacuda.convert(model, recipe="bitnet_ana", weight_eps=weight_scale, sigma=0.3)
    with torch.no_grad():
        qmodel[0].weight_quant.eps.mul_(1.5)
    fresh.load_state_dict(qmodel.state_dict())
    assert_equal(fresh[0].weight_quant.eps.detach(), 1.5 * init)
    bit = anacuda.nn.BitLinear(16, 8, weight_scale=weight_scale)
    bit(x).sum().backward()
    assert bit.weight_quant.eps.grad.abs().sum() > 0


def test_learned_scale_of_attention_starts_from_its_own_weight():
    """MultiheadAttention's weights are the model's (or its own), set after the projections'
    quantisers were built from placeholder layers: the learned scales start from them."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    q = anacuda.convert(enc, recipe="bitnet", weight_eps="learned_per_channel", head=None)
    for attn, ref in ((q.self_attn, enc.self_attn),
                      (anacuda.nn.TernaryMultiheadAttention(16, 2, kdim=8, weight_scale="learned"), None)):
        for quant, weight in attn._weight_quantisers():
            w = (weight if ref is None else dict(ref.named_parameters())[
                "out_proj.weight" if weight is attn.out_proj.weight else "in_proj_weight"]).detach()
            expected = 2 * (w.abs().mean(1, keepdim=True) if quant.per_channel else w.abs().mean().reshape(1))
            assert_equal(quant.eps.detach(), expected)


def test_learned_weight_scale_bad_input():
    with pytest.raises(ValueError, match="weight_scale must be .* 'learned' or 'learned_per_channel', got 'learn'"):
        anacuda.nn.TernaryLinear(4, 4, weight_scale="learn")
    with pytest.raises(TypeError, match="weight_eps and linear_options\\['weight_scale'\\] are the same option"):
        anacuda.convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), recipe="bitnet", weight_eps="learned",
                        linear_options=dict(weight_scale="absmean"))
