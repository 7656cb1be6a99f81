"""TernaryLinear, BitLinear and DynamicScaleANA (anacuda.nn.ternary) against BitNet b1.58's code."""

import io

import pytest
import torch
from torch import nn

from anacuda import NOISES, STRATEGIES, Quantizer
from conftest import bitnet_activation_quant as activation_quant, bitnet_weight_quant as weight_quant
from anacuda.nn import ANALinear, BitLinear, DynamicScaleANA, NoiseController, TernaryLinear


# --- BitNet b1.58, as its public code writes it ("The Era of 1-bit LLMs: Training Tips, Code and FAQ") ---


def weight_quant_per_row(w):
    """The per-output-channel variant found in many BitLinear copies."""
    scale = 1.0 / w.abs().mean(dim=1, keepdim=True).clamp_(min=1e-5)
    return (w * scale).round().clamp_(-1, 1) / scale


def bitnet_linear(layer, x):
    """BitNet's BitLinear.forward with the layer's weight (and RMSNorm weight, if any)."""
    w = layer.weight
    x_norm = x if layer.norm is None else nn.functional.rms_norm(x, (x.shape[-1],), layer.norm.weight)
    # A trick for implementing Straight-Through-Estimator (STE) using detach()
    x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()
    w_quant = w + (weight_quant(w) - w).detach()
    return nn.functional.linear(x_quant, w_quant, layer.bias)


def assert_agrees_except_ties(actual, expected, u, step):
    """actual == expected (to float rounding) except where BitNet's pre-rounding value u lies
    within rounding of a threshold (a half-integer: BitNet rounds half to even and multiplies by
    1/eps, anacuda rounds half up and divides by eps); there they differ by one step."""
    diff = (actual - expected).abs()
    same = diff <= 1e-6 * expected.abs() + 1e-6 * step
    near = ((u - u.floor()) - 0.5).abs() <= 1e-5 * u.abs().clamp(min=1)
    assert bool((same | near).all()), f"{int((~(same | near)).sum())} elements differ away from a threshold"
    off = ~same
    torch.testing.assert_close(diff[off], step.expand_as(diff)[off], rtol=1e-5, atol=0)


def test_presets_reproduce_bitnet_activation_and_weight_quant():
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.rand(64, 1) * 5
    x[3] = 0  # an all-zero token quantises to 0
    x[5, :10] = torch.arange(10) + 0.5  # exact ties: half to even (BitNet) vs half up (anacuda)
    x[5, 10] = 127.0  # ... at eps = 1 (max |x| = 127)
    x[5, 11:] = 0
    a = DynamicScaleANA("absmax_per_token", sigma=0.0)
    s = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    assert_agrees_except_ties(a(x), activation_quant(x), x * s, 1 / s)
    assert torch.equal(a(x)[3], torch.zeros(96))
    assert torch.equal(a(x)[5, :10], torch.arange(10) + 1.0)  # ties go up (SPEC §1)
    assert not torch.equal(activation_quant(x)[5, :10], a(x)[5, :10])  # BitNet: 0, 2, 2, 4, ...

    w = torch.randn(48, 96) * 0.02
    for rule, ref, m in (("absmean", weight_quant, w.abs().mean()),
                         ("absmean_per_channel", weight_quant_per_row, w.abs().mean(1, keepdim=True))):
        q = DynamicScaleANA(rule, Quantizer.ternary(), sigma=0.0)
        assert_agrees_except_ties(q(w), ref(w), w / m, m)
        assert set(torch.unique((q(w) / m).round()).tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("make", [lambda: TernaryLinear(8, 4, noise="normal", sigma=0.3), lambda: BitLinear(8, 4)],
                         ids=["ana", "bitnet"])
def test_one_op_call_per_quantiser(make):
    """Each quantiser is one call of the op, which computes the dynamic scale itself (SPEC §9):
    no pass over x or the weight in Python (no abs, max, mean or detach trick) in the forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    layer = make()
    layer.norm = None  # BitLinear's RMSNorm is torch's, not a quantiser's
    x = torch.randn(3, 5, 8, requires_grad=True)

    class Record(TorchDispatchMode):
        calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            big = [a.shape for a in args if isinstance(a, torch.Tensor) and a.shape in (x.shape, layer.weight.shape)]
            if big:
                self.calls.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        layer(x)
    assert Record.calls.count("_ana_dynamic") == 2
    assert set(Record.calls) <= {"_ana_dynamic", "view", "t", "addmm", "mm", "_unsafe_view"}, Record.calls


@pytest.mark.parametrize("norm", [False, True])
def test_bitlinear_forward_and_gradients_equal_bitnet(norm):
    torch.manual_seed(1)
    layer = BitLinear(64, 32, bias=norm, norm=norm)
    if norm:
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 10, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    ref_layer = layer  # the same parameters; bitnet_linear reads them directly
    y_ref = bitnet_linear(ref_layer, x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    gw, gx = torch.autograd.grad(y, (layer.weight, x), g)
    params = [layer.weight] + ([layer.norm.weight, layer.bias] if norm else [])
    grads_ref = torch.autograd.grad(y_ref, params + [x_ref], g)
    torch.testing.assert_close(gw, grads_ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, grads_ref[-1], rtol=1e-5, atol=1e-6)
    if norm:
        gn, gb = torch.autograd.grad(layer(x), (layer.norm.weight, layer.bias), g)
        torch.testing.assert_close(gn, grads_ref[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb, grads_ref[2], rtol=1e-5, atol=1e-6)
    # the unclipped STE: large weights get a gradient (a clipped STE would give them none)
    big = layer.weight.abs() > 1.5 * layer.weight.abs().mean()
    assert big.any() and bool((gw[big] != 0).all())


def test_ana_clipped_ste_differs_from_bitnet_on_large_weights():
    """The issue's observation: with the default ANA backward (uniform σ = 0.5: the clipped
    STE), weights at |w| >= mean|w| get no gradient; BitNet's STE passes them."""
    torch.manual_seed(2)
    layer = TernaryLinear(32, 16, bias=False, activation_bits=None)
    x = torch.randn(4, 32)
    layer(x).sum().backward()
    u = layer.weight.detach() / layer.weight.detach().abs().mean()
    assert bool((layer.weight.grad[u.abs() >= 1.0] == 0).all())
    assert bool((layer.weight.grad[u.abs() < 0.99] != 0).all())


def test_sigma_zero_ana_is_the_hard_forward():
    torch.manual_seed(3)
    layer = TernaryLinear(24, 12, noise="normal", strategy="expectation", sigma=0.3, norm=True)
    x = torch.randn(5, 7, 24)
    hard = layer.eval()(x)
    layer.train()
    assert not torch.equal(layer(x), hard)  # σ > 0: smoothed
    ctrl = NoiseController(layer, 10)
    ctrl.step(10)  # annealed to the end: σ = 0 for both quantisers
    assert layer.weight_quant.sigma.item() == 0 and layer.input_quant.sigma.item() == 0
    assert torch.equal(layer(x), hard)
    # and the hard forward is BitNet's (same quantisers) except at ties
    bit = BitLinear(24, 12, bias=True, norm=True)
    bit.load_state_dict(layer.state_dict())
    torch.testing.assert_close(bit(x), hard)
    torch.testing.assert_close(bitnet_linear(layer, x), hard, rtol=1e-5, atol=1e-6)
    # small σ is close to the hard forward
    ctrl.step(9.9)
    assert 0 < layer.weight_quant.sigma.item() < 1e-3
    assert (layer(x) - hard).abs().max() < 0.05 * hard.abs().max()


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_noise_and_strategy_trains(noise, strategy):
    torch.manual_seed(4)
    layer = TernaryLinear(16, 8, noise=noise, strategy=strategy, sigma=0.3, activation_noise="logistic",
                          activation_strategy="expectation", activation_sigma=0.2)
    assert layer.weight_quant.noise == noise and layer.input_quant.noise == "logistic"
    assert layer.input_quant.sigma.item() == pytest.approx(0.2)
    x = torch.randn(6, 16, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and layer.weight.grad.abs().sum() > 0
    layer.eval()
    layer.weight_quant.sigma.fill_(0.0)
    w = layer.weight_quant(layer.weight)
    m = layer.weight.abs().mean()
    torch.testing.assert_close(w, (layer.weight / m).round().clamp(-1, 1) * m)


def test_identity_backward_with_noisy_forward():
    """backward_noise="identity" with a smoothed forward: the gradient is still the identity's."""
    q = DynamicScaleANA("absmean", Quantizer.ternary(), noise="uniform", strategy="expectation", sigma=0.4,
                        backward_noise="identity")
    w = torch.randn(10, 10, requires_grad=True)
    y = q(w)
    assert not torch.equal(y, (w / w.abs().mean()).round().clamp(-1, 1) * w.abs().mean())  # smoothed
    g = torch.randn(10, 10)
    (gw,) = torch.autograd.grad(y, w, g)
    assert torch.equal(gw, g)


def test_state_dict_round_trip():
    torch.manual_seed(5)
    a = TernaryLinear(12, 6, noise="triangular", mu=-0.1, sigma=0.4, activation_sigma=0.2,
                      weight_scale="absmean_per_channel", norm=True)
    with torch.no_grad():
        a.norm.weight.uniform_(0.5, 2)
    sd = a.state_dict()
    assert set(sd) == {"weight", "bias", "norm.weight", "input_quant.mu", "input_quant.sigma", "weight_quant.mu",
                       "weight_quant.sigma"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b = TernaryLinear(12, 6, noise="triangular", weight_scale="absmean_per_channel", norm=True)
    b.load_state_dict(torch.load(buf))
    for k, v in sd.items():
        assert torch.equal(b.state_dict()[k], v), k
    assert b.input_quant.sigma.item() == pytest.approx(0.2) and b.weight_quant.mu.item() == pytest.approx(-0.1)
    x = torch.randn(3, 4, 12)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    torch.testing.assert_close(b.eval()(x), a.eval()(x), rtol=0, atol=0)


def test_compiled_block_fullgraph_no_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    from examples.demo_lm import Block, ana_linear, bitnet_linear

    torch._dynamo.reset()
    for make in (ana_linear("normal", "expectation", 0.25), bitnet_linear):
        torch.manual_seed(6)
        block = Block(32, 4, make)
        # ANA: σ of the weights annealed (the hard activations have nothing to anneal); BitNet: hard
        ctrl = NoiseController(block, 4, groups="blocks") if make is not bitnet_linear else None
        cnt = CompileCounterWithBackend("aot_eager")  # traces the fakes and the autograd formulas
        compiled = torch.compile(block, backend=cnt, fullgraph=True)
        x = torch.randn(2, 9, 32)
        for t in range(3):
            if ctrl is not None:
                ctrl.step(t)
                assert block.fc1.weight_quant.sigma.item() == pytest.approx(0.25 * (1 - t / 4) ** 2)
            xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            ye, yc = block(xe), compiled(xc)
            torch.testing.assert_close(yc, ye)
            ye.square().sum().backward()
            yc.square().sum().backward()
            torch.testing.assert_close(xc.grad, xe.grad)
        assert cnt.frame_count == 1
        torch._dynamo.reset()


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly():
    layer = TernaryLinear(8, 4)
    with pytest.raises(ValueError, match=r"token dimension.*got \(\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"token dimension.*got \(8,\)"):
        layer(torch.randn(8))
    with pytest.raises(ValueError, match=r"in_features = 8.*got \(2, 5\)"):
        layer(torch.randn(2, 5))
    with pytest.raises(TypeError, match="x must be a tensor"):
        layer([[1.0] * 8])
    with pytest.raises(ValueError, match="needs tokens and features"):
        DynamicScaleANA()(torch.randn(5))
    with pytest.raises(ValueError, match="needs a channel dimension"):
        DynamicScaleANA("absmax_per_channel", Quantizer.ternary())(torch.tensor(2.0))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(weight_scale="absmax_per_token"), ValueError, "weight_scale"),
    (dict(weight_scale="max_abs"), ValueError, "weight_scale"),
    (dict(activation_bits=1), ValueError, "activation_bits"),
    (dict(activation_bits=8.0), ValueError, "activation_bits"),
    (dict(norm="yes"), TypeError, "norm must be a bool"),
    (dict(noise="cauchy"), ValueError, "unknown noise"),
    (dict(activation_strategy="median"), ValueError, "unknown strategy"),
    (dict(sigma=-1.0), ValueError, "sigma must be >= 0"),
    (dict(backward_noise="identical"), ValueError, "unknown noise"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        TernaryLinear(8, 4, **kwargs)


def test_bad_sizes_and_rules():
    with pytest.raises(ValueError, match="in_features must be an integer >= 1"):
        TernaryLinear(0, 4)
    with pytest.raises(ValueError, match="out_features must be an integer >= 1"):
        TernaryLinear(4, 2.5)
    with pytest.raises(ValueError, match="scale rule must be one of"):
        DynamicScaleANA("max_abs")


def test_empty_batch_zero_rows_and_nan_token():
    torch.manual_seed(7)
    layer = TernaryLinear(8, 4, norm=True)
    for shape in ((0, 8), (0, 5, 8), (3, 0, 8)):
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        assert y.shape == shape[:-1] + (4,)
        y.sum().backward()
        assert x.grad.shape == x.shape
    for lyr in (layer, TernaryLinear(8, 4), BitLinear(8, 4)):
        x = torch.randn(4, 8)
        x[1] = 0  # a row of zeros: quantised to 0, no NaN
        x.requires_grad_(True)
        y = lyr(x)
        assert torch.isfinite(y).all()
        if lyr.bias is not None:
            torch.testing.assert_close(y[1], lyr.bias)
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(lyr.weight.grad).all()
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")  # NaN in: that token's output is NaN (as in BitNet's code), the others are not
    y = TernaryLinear(8, 4, activation_bits=8)(x)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()
    x[1, 2] = float("inf")
    a = DynamicScaleANA()(x)
    assert torch.isnan(a[1]).all() and torch.isfinite(a[[0, 2]]).all()
    assert torch.isnan(activation_quant(x)[1]).all()  # BitNet's code: NaN too


def test_half_types_and_device_moves():
    layer = TernaryLinear(16, 8, norm=True).to(torch.bfloat16)
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert layer.weight_quant.sigma.dtype == torch.bfloat16  # buffers follow .to(dtype), as in ANALinear


def test_controller_finds_both_quantisers_and_freeze_keeps_layer():
    from anacuda.nn import freeze, quantised_modules

    model = nn.Sequential(TernaryLinear(8, 8, sigma=0.5), nn.GELU(), TernaryLinear(8, 2, sigma=0.5))
    names = [n for n, _ in quantised_modules(model)]
    assert names == ["0.input_quant", "0.weight_quant", "2.input_quant", "2.weight_quant"]
    ctrl = NoiseController(model, 4)
    ctrl.step(2)
    assert all(m.sigma.item() == pytest.approx(0.5 * 0.25) for _, m in quantised_modules(model))
    ctrl.step(4)
    assert all(m.sigma.item() == 0 for _, m in quantised_modules(model))
    assert "weight_scale=absmean" in repr(model[0]) and "rule=absmax_per_token" in repr(model[0])
    assert "backward_noise=identity" in repr(BitLinear(4, 4))
    # freeze: the deployed network equals the eval-mode one (TernaryLinear is kept, in eval mode)
    torch.manual_seed(8)
    mixed = nn.Sequential(TernaryLinear(8, 8, norm=True), nn.GELU(), ANALinear(8, 2))
    x = torch.randn(3, 5, 8)
    frozen = freeze(mixed)
    assert torch.equal(frozen(x), mixed.eval()(x))
