"""Every bad input to a public entry point is a clear error: the exception type and a phrase of
the message that says what is wrong, for ops (through functional and called directly), the
Quantizer and Noise constructors, the layers, convert, the controllers, freeze and the scale
helpers. Never a crash, a hang or a silent wrong result.

The table (CASES) and, at the end, the checks of Quantizer and functional.ana's arguments
(test_quantizer_errors, test_bad_arguments, test_bad_inputs) do not repeat each other;
test_alpha_blend.py and test_nn.py hold further cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CUDA, anacuda

F = anacuda.functional
Q = anacuda.Quantizer
ops = torch.ops.anacuda
from anacuda import Noise, scale  # noqa: E402
from anacuda.nn import (ANAActivation, ANAConv2d, ANALinear, AlphaBlendConv1d, AlphaBlendLinear,  # noqa: E402
                        AlphaController, Decay, NoiseController, convert, freeze)

cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")]


# --- helpers: small inputs --------------------------------------------------------------------------
def x4(dtype=torch.float32):
    return torch.linspace(-2, 2, 4, dtype=dtype)


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def ana_model():
    return convert(mlp())


def blend_model():
    return convert(mlp(), weights="alpha_blend")


def tables(q=None, dtype=torch.float32):
    return (q or Q.ternary()).tables(torch.device("cpu"), dtype)


def op_ana(x=None, levels=None, thresholds=None, uniform_grid=True, eps=None, noise="normal", mu=None, sigma=None,
           strategy="mode", training=True, seed=None, noise_b="normal", mu_b=None, sigma_b=None):
    """torch.ops.anacuda.ana with good arguments except the ones given."""
    x = x4() if x is None else x
    lv, th = tables(dtype=x.dtype if x.is_floating_point() else torch.float32)
    return ops.ana(x, lv if levels is None else levels, th if thresholds is None else thresholds, uniform_grid,
                   f64(1.0) if eps is None else eps, noise, f64(0.0) if mu is None else mu,
                   f64(0.5) if sigma is None else sigma, strategy, training, seed, noise_b,
                   f64(0.0) if mu_b is None else mu_b, f64(0.5) if sigma_b is None else sigma_b)


def op_code_backward(code, levels, grad=None, sigma_b=None):
    return ops._ana_backward_code(x4() if grad is None else grad, code, levels, f64(0.5) if sigma_b is None else sigma_b)


# --- the table ---------------------------------------------------------------------------------------
def case(id, fn, exc, match, *marks):
    return pytest.param(fn, exc, match, id=id, marks=list(marks))


CASES = [
    # functional.ana ----------------------------------------------------------------------------
    case("ana-x-numpy-array", lambda: F.ana(np.ones(3), Q.ternary()), TypeError, "x must be a tensor, got ndarray"),
    case("ana-x-bool", lambda: F.ana(torch.ones(3, dtype=torch.bool), Q.ternary()), TypeError,
         "x must be float64, float32, float16 or bfloat16, got torch.bool"),
    case("ana-x-sparse", lambda: F.ana(torch.ones(3).to_sparse(), Q.ternary()), NotImplementedError,
         "Could not run 'anacuda::ana' with arguments from the 'SparseCPU' backend"),
    case("ana-quantizer-tuple", lambda: F.ana(x4(), ([-1, 1], [0])), TypeError,
         "quantizer must be an anacuda.Quantizer, got tuple"),
    case("ana-noise-None", lambda: F.ana(x4(), Q.ternary(), noise=None), ValueError, "unknown noise None"),
    case("ana-strategy-None", lambda: F.ana(x4(), Q.ternary(), strategy=None), ValueError, "unknown strategy None"),
    case("ana-training-string", lambda: F.ana(x4(), Q.ternary(), training="False"), TypeError, "training"),
    case("ana-mu-numpy", lambda: F.ana(x4(), Q.ternary(), mu=np.zeros(1)), TypeError,
         "mu must be a number or a tensor, got ndarray"),
    case("ana-eps-complex", lambda: F.ana(x4(), Q.ternary(), eps=torch.tensor(1 + 0j)), TypeError,
         "eps must be a floating tensor, got torch.complex64"),
    case("ana-sigma-int-overflows-float", lambda: F.ana(x4(), Q.ternary(), sigma=10**400), OverflowError,
         "too large to convert to float"),
    case("ana-sigma-tensor-negative-names-sigma", lambda: F.ana(x4(), Q.ternary(), sigma=torch.tensor(-0.5)),
         ValueError, "^anacuda: sigma must be >= 0"),
    case("ana-sigma-overflows-float32", lambda: F.ana(x4(), Q.uniform(8), "uniform", sigma=1e39, strategy="mode"),
         (ValueError, RuntimeError), "sigma"),
    case("ana-eps-overflows-float32", lambda: F.ana(x4(), Q.uniform(8), "normal", eps=1e39),
         (ValueError, RuntimeError), "eps"),
    case("ana-eps-on-meta", lambda: F.ana(x4(), Q.ternary(), eps=torch.ones(4, device="meta")), RuntimeError,
         "eps is on meta"),
    case("ana-mu-on-meta", lambda: F.ana(x4(), Q.ternary(), mu=torch.tensor(0.0, device="meta")), RuntimeError,
         "mu is on meta"),
    case("ana-sigma-on-meta", lambda: F.ana(x4(), Q.ternary(), sigma=torch.tensor(0.5, device="meta")),
         RuntimeError, "sigma is on meta"),
    case("ana-eps-on-cuda-x-on-cpu", lambda: F.ana(x4(), Q.ternary(), eps=torch.ones(4, device="cuda")),
         RuntimeError, "(?i)cuda", *cuda_only),
    case("ana-generator-not-a-generator", lambda: F.ana(x4(), Q.ternary(), strategy="random", generator="seed"),
         TypeError, "generator"),
    case("ana-generator-on-cuda-x-on-cpu",
         lambda: F.ana(x4(), Q.ternary(), strategy="random", generator=torch.Generator("cuda")),
         RuntimeError, "generator", *cuda_only),
    case("ana-backward-noise-dict", lambda: F.ana(x4(), Q.ternary(), backward_noise={"name": "uniform"}), TypeError,
         r"a noise is a name or a \(name, mu, sigma\) tuple"),
    case("ana-backward-noise-unknown-law", lambda: F.ana(x4(), Q.ternary(), backward_noise=Noise("gauss", 0.0, 1.0)),
         ValueError, "unknown noise 'gauss'"),
    # functional.alpha_blend ---------------------------------------------------------------------
    case("alpha_blend-alpha-None", lambda: F.alpha_blend(x4(), Q.ternary(), None), TypeError,
         "alpha must be a number or a tensor, got NoneType"),
    case("alpha_blend-alpha-int-tensor", lambda: F.alpha_blend(x4(), Q.ternary(), torch.tensor(1)), TypeError,
         "alpha must be a floating tensor"),
    case("alpha_blend-alpha-requires-grad",
         lambda: F.alpha_blend(x4(), Q.ternary(), torch.tensor(0.5, requires_grad=True)), ValueError,
         "alpha takes no gradient"),
    case("alpha_blend-alpha-on-meta", lambda: F.alpha_blend(x4(), Q.ternary(), torch.tensor(0.5, device="meta")),
         RuntimeError, "alpha is on meta"),
    case("alpha_blend-eps-per-channel-negative",
         lambda: F.alpha_blend(torch.ones(3, 4), Q.ternary(), 0.5, eps=-torch.ones(3, 1)), ValueError,
         "every eps must be finite and > 0"),
    case("alpha_blend-w-list", lambda: F.alpha_blend([1.0, 2.0], Q.ternary(), 0.5), TypeError, "must be a tensor"),
    # Quantizer, Noise ---------------------------------------------------------------------------
    case("Quantizer-levels-None", lambda: Q(None, [0.5]), TypeError, "levels must be a sequence of numbers"),
    case("Quantizer-levels-0d-tensor", lambda: Q(torch.tensor(1.0), [0.5]), ValueError,
         "levels must be one-dimensional"),
    case("Quantizer-levels-string", lambda: Q("13", "2"), TypeError, "sequence of numbers"),
    case("Quantizer-levels-complex", lambda: Q(torch.tensor([1 + 1j, 2 + 0j]), [1.5]), TypeError, "levels"),
    case("Quantizer.uniform-nbits-float", lambda: Q.uniform(2.0), ValueError, r"nbits must be an integer in \[1, 24\]"),
    case("Quantizer.uniform-nbits-25", lambda: Q.uniform(25), ValueError, r"nbits must be an integer in \[1, 24\], got 25"),
    case("Noise.of-None", lambda: Noise.of(None), TypeError, r"a noise is a name or a \(name, mu, sigma\) tuple"),
    case("Noise.of-4-tuple", lambda: Noise.of(("uniform", 0.0, 1.0, 2.0)), TypeError,
         r"a noise is a name or a \(name, mu, sigma\) tuple"),
    case("Noise.of-unknown-law", lambda: Noise.of("gauss"), ValueError, "unknown noise 'gauss'"),
    # layers --------------------------------------------------------------------------------------
    case("ANAActivation-quantizer-string", lambda: ANAActivation("ternary"), TypeError,
         "quantizer must be an anacuda.Quantizer, got str"),
    case("ANAActivation-eps-string", lambda: ANAActivation(eps="max_abs"), TypeError,
         "eps must be a number or a tensor, got str"),
    case("ANAActivation-sigma-tensor-negative", lambda: ANAActivation(sigma=torch.tensor(-1.0)), ValueError, "sigma"),
    case("ANALinear-eps-mode-unknown", lambda: ANALinear(3, 4, eps="per_channel"), ValueError,
         "weight eps must be a number, a tensor or one of"),
    case("ANALinear-init-unknown", lambda: ANALinear(3, 4, init="zeros"), ValueError,
         "init must be None or 'thresholds'"),
    case("ANALinear-eps-tensor-negative", lambda: ANALinear(3, 4, eps=torch.tensor(-1.0)), ValueError, "eps"),
    case("ANALinear-eps-shape", lambda: ANALinear(3, 4, eps=torch.ones(3, 1)), ValueError,
         r"eps of shape \(3, 1\) does not broadcast to the weight's shape \(4, 3\)"),
    case("ANAConv2d-strategy-unknown", lambda: ANAConv2d(3, 4, 3, strategy="sample"), ValueError,
         "unknown strategy 'sample'"),
    case("AlphaBlendLinear-alpha-tensor-2", lambda: AlphaBlendLinear(3, 4, alpha=torch.tensor(2.0)), ValueError,
         "alpha"),
    case("AlphaBlendConv1d-quantizer-string", lambda: AlphaBlendConv1d(3, 4, 3, quantizer="x"), TypeError,
         "quantizer must be an anacuda.Quantizer, got str"),
    # convert ---------------------------------------------------------------------------------------
    case("convert-model-int", lambda: convert(42), TypeError, "model must be a torch.nn.Module, got int"),
    case("convert-activations-unknown", lambda: convert(mlp(), activations="relu"), ValueError,
         "activations must be 'ana' or None"),
    case("convert-skip-int", lambda: convert(mlp(), skip=[3]), TypeError, "skip holds module names or types, got 3"),
    case("convert-weight-quantizer-string", lambda: convert(mlp(), weight_quantizer="ternary"), TypeError,
         "quantizer must be an anacuda.Quantizer"),
    case("convert-noise-unknown", lambda: convert(mlp(), noise="gauss"), ValueError, "unknown noise 'gauss'"),
    case("convert-noise-unknown-nothing-to-convert", lambda: convert(nn.Sequential(nn.Identity()), noise="gauss"),
         ValueError, "unknown noise 'gauss'"),
    case("convert-alpha-out-of-range", lambda: convert(mlp(), weights="alpha_blend", alpha=3), ValueError,
         r"alpha must be in \[0, 1\]"),
    # NoiseController, AlphaController, Decay ---------------------------------------------------------
    case("NoiseController-model-int", lambda: NoiseController(42), TypeError, "torch.nn.Module"),
    case("NoiseController-epochs-string", lambda: NoiseController(ana_model(), "10"), (TypeError, ValueError),
         "epochs"),
    case("NoiseController-epochs-nan", lambda: NoiseController(ana_model(), math.nan), ValueError,
         "epochs must be > 0, got nan"),
    case("NoiseController-epochs-inf", lambda: NoiseController(ana_model(), math.inf), ValueError,
         r"tstart < tend, got \[0.0, inf\]"),
    case("NoiseController-window-unknown", lambda: NoiseController(ana_model(), window="x"), ValueError,
         "unknown window 'x'"),
    case("NoiseController-power-unknown", lambda: NoiseController(ana_model(), power="x"), ValueError,
         "unknown power 'x'"),
    case("NoiseController-schedule-unknown", lambda: NoiseController(ana_model(), schedule="x"), ValueError,
         "unknown schedule 'x'"),
    case("NoiseController-group-unknown", lambda: NoiseController(ana_model(), groups=[["zz"]]), ValueError,
         r"\['zz'\] are not ANA layers of the model"),
    case("NoiseController-group-empty", lambda: NoiseController(ana_model(), groups=[[]]), ValueError, "group"),
    case("NoiseController-sigma0-negative", lambda: NoiseController(ana_model(), sigma0=-1.0), ValueError, "sigma0"),
    case("NoiseController-sigma0-nan", lambda: NoiseController(ana_model(), sigma0=math.nan), ValueError, "sigma0"),
    case("NoiseController-ctrl_spec-without-modules",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"mi": {"beta": 0.0}}]), (ValueError, KeyError),
         "ctrl_spec"),
    case("NoiseController-ctrl_spec-fun-unknown",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"], "mi": {"fun": "exp"}}]), ValueError,
         "unknown ctrl_spec fun 'exp'"),
    case("NoiseController-step-string", lambda: NoiseController(ana_model()).step("a"), TypeError,
         "t must be a number, got str"),
    case("AlphaController-model-int", lambda: AlphaController(42), TypeError, "torch.nn.Module"),
    case("AlphaController-shape-unknown", lambda: AlphaController(blend_model(), shape="x"), ValueError,
         "shape must be 'cubic' or 'linear'"),
    case("AlphaController-end-before-start", lambda: AlphaController(blend_model(), 1.0, start=2.0), ValueError,
         r"needs start < end, got \[2.0, 1.0\]"),
    case("AlphaController-start-minus-inf", lambda: AlphaController(blend_model(), 1.0, start=-math.inf), ValueError,
         "start"),
    case("Decay-power-negative", lambda: Decay("bws", 0, 1, -1), ValueError, "the decay power must be >= 0"),
    # freeze --------------------------------------------------------------------------------------------
    case("freeze-model-int", lambda: freeze(42), TypeError, "torch.nn.Module"),
    case("freeze-not-converted", lambda: freeze(mlp()), ValueError, "convert"),
    case("freeze-levels-not-increasing", lambda: freeze(convert(mlp(), weight_quantizer=Q([1.0, -1.0], [0.0]))),
         ValueError, r"a weight quantizer's levels must not decrease .* got levels \[1.0, -1.0\]"),
    # scale -------------------------------------------------------------------------------------------
    case("scale.max_abs-x-list", lambda: scale.max_abs([1.0], Q.ternary()), TypeError, "x must be a floating tensor"),
    case("scale.max_abs-x-int", lambda: scale.max_abs(torch.ones(3, dtype=torch.int32), Q.ternary()), TypeError,
         "x must be a floating tensor"),
    case("scale.max_abs-quantizer-string", lambda: scale.max_abs(torch.ones(3), "ternary"), TypeError,
         "anacuda.Quantizer"),
    case("scale.max_abs-dim-string", lambda: scale.max_abs(torch.ones(3, 2), Q.ternary(), dim="0"), TypeError, "dim"),
    case("scale.max_abs-dim-0d", lambda: scale.max_abs(torch.tensor(1.0), Q.ternary(), dim=0), ValueError,
         "dim 0 is out of range for a 0-d tensor"),
    case("scale.min_max-all-levels-zero", lambda: scale.min_max(torch.ones(3), Q([0.0, 0.0], [0.5])), ValueError,
         "every level of the quantiser is 0"),
    case("scale.min_max-empty", lambda: scale.min_max(torch.empty(0, 2), Q.ternary(), dim=1), ValueError,
         "x is empty"),
    # torch.ops.anacuda called directly --------------------------------------------------------------
    case("op.ana-seed-float", lambda: op_ana(strategy="random", seed=torch.tensor([1.0, 2.0])), RuntimeError,
         r"seed must be an int64 tensor of 2 elements \(seed, stream\)"),
    case("op.ana-seed-on-meta", lambda: op_ana(strategy="random", seed=torch.tensor([1, 2], device="meta")),
         RuntimeError, "seed is on meta"),
    case("op.ana-levels-on-meta", lambda: op_ana(levels=tables()[0].to("meta")), RuntimeError,
         "levels and thresholds must be on the input's device"),
    case("op.ana-mu-two-elements", lambda: op_ana(mu=f64([0.0, 1.0])), RuntimeError,
         r"mu must be a number or a one-element tensor, got shape \[2\]"),
    case("op.ana-mu-int", lambda: op_ana(mu=torch.tensor(0)), RuntimeError, "mu must be a floating tensor, got Long"),
    case("op.ana-sigma-nan", lambda: op_ana(sigma=f64(math.nan), noise_b="uniform", sigma_b=f64(0.5)), ValueError,
         "^anacuda: sigma must be finite, got nan"),
    case("op.ana-eps-int", lambda: op_ana(eps=torch.tensor(1)), RuntimeError,
         "eps must be a number or a floating tensor"),
    case("op.ana-thresholds-2d", lambda: op_ana(thresholds=tables()[1].reshape(1, 2)), RuntimeError,
         r"thresholds must be a non-empty 1-D tensor, got shape \[1, 2\]"),
    case("op.ana-tables-float64-for-half", lambda: op_ana(x=x4(torch.float16), levels=tables()[0].double(),
                                                          thresholds=tables()[1].double()),
         RuntimeError, "levels and thresholds must be Float for a Half input"),
    case("op.ana-noise-b-unknown", lambda: op_ana(noise_b="box"), RuntimeError, "unknown noise 'box'"),
    case("op.ana_backward-grad-dtype",
         lambda: ops._ana_backward(x4(torch.float64), x4(), *tables(), True, f64(1.0), "normal", f64(0.0), f64(0.5)),
         RuntimeError, "the gradient must have the input's shape, dtype and device"),
    case("op.ana_backward-x-int",
         lambda: ops._ana_backward(torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32), *tables(), True,
                                  f64(1.0), "normal", f64(0.0), f64(0.5)),
         RuntimeError, "input must be float64, float32, float16 or bfloat16, got Int"),
    case("op.ana_code-x-int",
         lambda: ops._ana_code(torch.ones(4, dtype=torch.int32), *tables(), f64(1.0), f64(0.0), f64(0.5)),
         RuntimeError, "input must be float64, float32, float16 or bfloat16, got Int"),
    case("op.ana_backward_code-17-levels", lambda: op_code_backward(torch.zeros(4, dtype=torch.uint8), torch.zeros(17)),
         RuntimeError, "a coded backward needs 2 to 16 levels, got 17"),
    case("op.ana_backward_code-levels-float64",
         lambda: op_code_backward(torch.zeros(4, dtype=torch.uint8), tables()[0].double()), RuntimeError,
         "levels must be Float on the gradient's device"),
    case("op.ana_backward_code-code-shape", lambda: op_code_backward(torch.zeros(5, dtype=torch.uint8), tables()[0]),
         RuntimeError, "the code must be a uint8 tensor of the gradient's shape and device"),
    case("op.ana_coded-normal-backward-noise",
         lambda: ops._ana_coded(x4(), *tables(), True, f64(1.0), "normal", f64(0.0), f64(0.5), "mode", True, None,
                               "normal", f64(0.0), f64(0.5)),
         RuntimeError, "ana_coded needs a uniform backward noise, got 'normal'"),
    case("op.ana_coded-16-thresholds",
         lambda: ops._ana_coded(x4(), *tables(Q.uniform(5)), True, f64(1.0), "uniform", f64(0.0), f64(0.5), "mode", True,
                               None, "uniform", f64(0.0), f64(0.5)),
         RuntimeError, "a coded backward needs at most 15 thresholds, got 31"),
    case("op.alpha_blend-alpha-two-elements", lambda: ops.alpha_blend(x4(), *tables(), True, f64(1.0), f64([0.1, 0.2])),
         RuntimeError, r"alpha must be a number or a one-element tensor, got shape \[2\]"),
    case("op.alpha_blend-alpha-1.5", lambda: ops.alpha_blend(x4(), *tables(), True, f64(1.0), f64(1.5)), ValueError,
         r"alpha must be in \[0, 1\], got 1.5"),
    case("op.alpha_blend-w-int",
         lambda: ops.alpha_blend(torch.ones(4, dtype=torch.int32), *tables(), True, f64(1.0), f64(0.5)),
         RuntimeError, "weight must be float64, float32, float16 or bfloat16, got Int"),
]


@pytest.mark.parametrize("call, exc, match", CASES)
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_the_table_is_broad():
    """At least 30 kinds of bad input, over every public entry point."""
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) >= 30
    for prefix in ["ana-", "alpha_blend-", "Quantizer", "Noise", "ANAActivation", "ANALinear", "AlphaBlend",
                   "convert", "NoiseController", "AlphaController", "freeze", "scale.", "op.ana-", "op.ana_backward",
                   "op.ana_code", "op.alpha_blend"]:
        assert any(i.startswith(prefix) for i in ids), prefix


# --- inputs that are odd but legal: a defined answer, no error --------------------------------------
def test_a_lying_uniform_grid_hint_still_gives_the_right_answer():
    """uniform_grid is a hint (the kernels compare with the stored thresholds either way): passed
    for a non-uniform grid straight to the op, the answer is still the stair's."""
    q = Q([0.0, 1.0, 2.0, 3.0, 5.0], [-2.0, 0.1, 0.2, 3.0])
    assert not q.uniform_grid
    x = torch.linspace(-4, 5, 91)
    lv, th = q.tables(x.device, x.dtype)
    for strategy, sigma in [("mode", 0.3), ("expectation", 0.3), ("mode", 0.0)]:
        for noise in anacuda.NOISES:
            lie = ops.ana(x, lv, th, True, f64(1.0), noise, f64(0.0), f64(sigma), strategy, True, None, noise, f64(0.0),
                          f64(sigma))
            truth = ops.ana(x, lv, th, False, f64(1.0), noise, f64(0.0), f64(sigma), strategy, True, None, noise,
                            f64(0.0), f64(sigma))
            assert torch.equal(lie, truth), (strategy, noise, sigma)


def test_a_failed_call_leaves_nothing_behind():
    """After a rejected call the same quantiser and input still give the right answer (the
    cached tables are not half-built, the input is untouched)."""
    q = Q.uniform(3)
    x = torch.linspace(-5, 5, 33)
    x0 = x.clone()
    good = F.ana(x, q, "normal", 0.1, 0.4, "mode")
    for bad in [dict(sigma=-1.0), dict(eps=torch.ones(7)), dict(noise="gauss"), dict(mu=torch.tensor(math.nan))]:
        with pytest.raises((ValueError, RuntimeError)):
            F.ana(x, q, **{**dict(noise="normal", mu=0.1, sigma=0.4, strategy="mode"), **bad})
    assert torch.equal(x, x0)
    assert torch.equal(F.ana(x, q, "normal", 0.1, 0.4, "mode"), good)


def test_forged_codes_give_nan():
    """A byte that ana_code never writes (here a box range [0, 15) on a quantiser of 2 thresholds,
    or lo >= hi) gets a NaN gradient; no read past the levels, which are a view into 16 floats of
    1000 so that a read past them would show in the result. Rejecting such a code with an error
    would cost a reduction over the codes in every backward (on a GPU a synchronisation); only a
    direct call of the op can pass one, since autograd saves the codes the forward wrote."""
    storage = torch.full((16,), 1000.0)
    storage[:3] = torch.tensor([-1.0, 0.0, 1.0])
    code = torch.tensor([0x0F, 0x21, 0x11, 0x02, 0x00, 0xF0], dtype=torch.uint8)
    gx = op_code_backward(code, storage[:3], grad=torch.ones(6))
    assert gx[:3].isnan().all() and gx[5].isnan()
    assert gx[3].item() == 2.0 and gx[4].item() == 0.0  # boxes 0 and 1 (each 0.5 / sigma = 1); none


# --- bad input -------------------------------------------------------------------------------------
def test_quantizer_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        Q([0, 1, 2], [0.5, -0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        Q([0, 1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="K thresholds need K \\+ 1 levels"):
        Q([0, 1, 2, 3], [0.5, 1.5])
    with pytest.raises(ValueError, match="K thresholds need K \\+ 1 levels"):
        Q([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="levels must be finite"):
        Q([0, float("inf")], [0.5])
    with pytest.raises(ValueError, match="levels must be finite"):
        Q([float("nan"), 1], [0.5])
    with pytest.raises(ValueError, match="thresholds must be finite"):
        Q([0, 1], [float("nan")])
    with pytest.raises(ValueError, match="at least one threshold"):
        Q([1.0], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        Q(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="sequence of numbers"):
        Q(["a", "b"], [0.5])
    with pytest.raises(ValueError, match="nbits must be an integer"):
        Q.uniform(0)
    with pytest.raises(ValueError, match="single level"):
        Q.uniform(1, signed=True, balanced=True)


def _ana(x=None, q=None, **kw):
    x = torch.linspace(-2, 2, 12).reshape(3, 4) if x is None else x
    return F.ana(x, q or Q.ternary(), **kw)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(sigma=-0.1), ValueError, "sigma must be >= 0"),
    (dict(sigma=float("nan")), ValueError, "sigma must be finite"),
    (dict(sigma=float("inf")), ValueError, "sigma must be finite"),
    (dict(sigma=torch.tensor(-0.5)), ValueError, "sigma must be >= 0"),
    (dict(sigma=torch.tensor(float("nan"))), ValueError, "sigma must be finite"),
    (dict(mu=float("nan")), ValueError, "mu must be finite"),
    (dict(mu=torch.tensor(float("inf"))), ValueError, "mu must be finite"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=-1.0), ValueError, "eps must be > 0"),
    (dict(eps=torch.tensor(0.0)), ValueError, "eps must be finite and > 0"),
    (dict(eps=torch.tensor(-2.0)), ValueError, "eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [0.0], [2.0]])), ValueError, "every eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [-3.0], [2.0]])), ValueError, "every eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [float("nan")], [2.0]])), ValueError, "every eps must be finite and > 0"),
    (dict(eps=torch.ones(3)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(2, 1)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(1, 3, 4)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(3, 1, dtype=torch.int64)), TypeError, "eps must be a floating tensor"),
    (dict(noise="gaussian"), ValueError, "unknown noise 'gaussian'"),
    (dict(strategy="sample"), ValueError, "unknown strategy 'sample'"),
    (dict(mu=torch.tensor([0.0, 1.0])), ValueError, "mu must be a number or a one-element tensor"),
    (dict(sigma=torch.ones(2)), ValueError, "sigma must be a number or a one-element tensor"),
    (dict(sigma=torch.tensor(0.5, requires_grad=True)), ValueError, "sigma takes no gradient"),
    (dict(mu=torch.tensor(0.5, requires_grad=True)), ValueError, "mu takes no gradient"),
    (dict(mu=torch.tensor(1)), TypeError, "mu must be a floating tensor"),
    (dict(sigma="0.5"), TypeError, "sigma must be a number or a tensor"),
    (dict(sigma=True), TypeError, "sigma must be a number or a tensor"),
    (dict(backward_noise=("uniform", 0.0)), TypeError, "a noise is a name or a \\(name, mu, sigma\\) tuple"),
    (dict(backward_noise=42), TypeError, "a noise is a name or a \\(name, mu, sigma\\) tuple"),
    (dict(backward_noise=("box", 0.0, 0.5)), ValueError, "unknown noise 'box'"),
    (dict(backward_noise=("uniform", 0.0, -0.5)), ValueError, "backward sigma must be >= 0"),
    (dict(backward_noise=("uniform", float("nan"), 0.5)), ValueError, "backward mu must be finite"),
    (dict(backward_noise=("uniform", 0.0, torch.tensor(-1.0))), ValueError, "backward sigma must be >= 0"),
    (dict(backward_noise=("uniform", torch.zeros(2), 0.5)), ValueError,
     "backward mu must be a number or a one-element tensor"),
    (dict(backward_noise=("uniform", 0.0, torch.tensor(0.5, requires_grad=True))), ValueError,
     "backward sigma takes no gradient"),
])
def test_bad_arguments(kw, exc, match):
    for strategy in ["expectation", "mode", "random"]:
        with pytest.raises(exc, match=match):
            _ana(**{"strategy": strategy, **kw})


def test_bad_inputs():
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16"):
        F.ana(torch.arange(5), Q.ternary())
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16"):
        F.ana(torch.ones(3, dtype=torch.complex64), Q.ternary())
    with pytest.raises(TypeError, match="x must be a tensor"):
        F.ana([1.0, 2.0], Q.ternary())
    with pytest.raises(TypeError, match="quantizer must be an anacuda.Quantizer"):
        F.ana(torch.ones(3), ([-1, 1], [0]))
    # the op itself checks what the wrapper would have caught
    x = torch.ones(4)
    q = Q.ternary()
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    one = f64(1.0)
    ana = torch.ops.anacuda.ana
    with pytest.raises(RuntimeError, match="input must be float64, float32, float16 or bfloat16"):
        ana(torch.ones(4, dtype=torch.int32), lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None,
            "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown noise 'foo'"):
        ana(x, lv, th, False, one, "foo", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown noise 'bar'"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None, "bar", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown strategy 'foo'"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "foo", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="the random strategy needs a seed tensor"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "random", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="seed must be an int64 tensor of 2 elements"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "random", True, torch.tensor([1, 2, 3]), "normal",
            f64(0), f64(1))
    with pytest.raises(RuntimeError, match="levels and thresholds must be"):
        ana(x, lv.double(), th.double(), False, one, "normal", f64(0), f64(1), "mode", True, None, "normal",
            f64(0), f64(1))
    with pytest.raises(RuntimeError, match="needs K \\+ 1 levels"):
        ana(x, lv[:2], th, False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="thresholds must be a non-empty 1-D tensor"):
        ana(x, lv[:1], th[:0], False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0),
            f64(1))
    with pytest.raises(ValueError, match="backward sigma must be >= 0"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(-1))
    with pytest.raises(RuntimeError, match="the gradient must have the input's shape"):
        torch.ops.anacuda._ana_backward(torch.ones(5), x, lv, th, False, one, "normal", f64(0), f64(1))
# --- issue 12: arguments of controllers, layers, quantisers, configs, checked when given ------------
# (a self-contained block: its own table and test)
def _controller():
    return NoiseController(ana_model(), 4)


ISSUE12_CASES = [
    case("NoiseController-step-nan", lambda: _controller().step(math.nan), ValueError,
         "t must be a finite time >= 0, got nan"),
    case("NoiseController-step-inf", lambda: _controller().step(math.inf), ValueError, "t must be a finite time"),
    case("NoiseController-step-string-number", lambda: _controller().step("1"), TypeError,
         "t must be a number, got str"),
    case("NoiseController-step-negative", lambda: _controller().step(-5), ValueError,
         "t must be a finite time >= 0, got -5.0"),
    case("NoiseController-step-bool", lambda: _controller().step(True), TypeError, "t must be a number, got bool"),
    case("NoiseController-step-tensor", lambda: _controller().step(torch.tensor(1.0)), TypeError,
         "t must be a number, got Tensor"),
    case("AlphaController-step-nan", lambda: AlphaController(blend_model()).step(math.nan), ValueError,
         "AlphaController.step: t must be a finite time"),
    case("NoiseController-load_state_dict-empty", lambda: _controller().load_state_dict({}), ValueError,
         "not a NoiseController state dict"),
    case("NoiseController-load_state_dict-list", lambda: _controller().load_state_dict([]), TypeError,
         "state must be a dict"),
    case("NoiseController-load_state_dict-other-config",
         lambda: _controller().load_state_dict(NoiseController(ana_model(), 8).state_dict()), ValueError,
         "the state dict is from another configuration"),
    case("NoiseController-load_state_dict-alpha-state",
         lambda: _controller().load_state_dict(AlphaController(blend_model()).state_dict()), ValueError,
         "not a NoiseController state dict"),
    case("NoiseController-ctrl_spec-key-sigam",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"], "sigam": {"beta": 0.5}}]), ValueError,
         r"unknown ctrl_spec entry keys \['sigam'\]; allowed: \['mi', 'modules', 'sigma'\]"),
    case("NoiseController-ctrl_spec-decay-key",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"], "sigma": {"base": 0.5}}]), ValueError,
         r"unknown ctrl_spec 'sigma' keys \['base'\]; allowed: \['beta', 'fun', 'kwargs'\]"),
    case("NoiseController-ctrl_spec-kwargs-key",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"], "sigma": {
             "beta": 0.5, "fun": "bws", "kwargs": {"tstart": 0, "tedn": 4}}}]), ValueError,
         r"unknown ctrl_spec 'sigma' kwargs keys \['tedn'\]; allowed: \['alpha', 'tend', 'tstart'\]"),
    case("NoiseController-ctrl_spec-sigma-beta-negative",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"], "sigma": {"beta": -0.5}}]), ValueError,
         "'sigma' beta must be finite and >= 0, got -0.5"),
    case("NoiseController-ctrl_spec-module-twice",
         lambda: NoiseController(ana_model(), ctrl_spec=[{"modules": ["0"]}, {"modules": ["0", "1"]}]), ValueError,
         "a module appears in two groups"),
    case("NoiseController-ctrl_spec-not-a-list", lambda: NoiseController(ana_model(), ctrl_spec={"modules": ["0"]}),
         TypeError, "ctrl_spec must be a list of dicts, got dict"),
    case("NoiseController-groups-string", lambda: NoiseController(ana_model(), groups="01"), TypeError,
         "groups must be a list of lists of module names"),
    case("NoiseController-anneal_sigma-string", lambda: NoiseController(ana_model(), anneal_sigma="no"), TypeError,
         "anneal_sigma must be a bool, got str"),
    case("NoiseController-mu0-string", lambda: NoiseController(ana_model(), mu0="-0.5"), TypeError,
         "mu0 must be a number, got str"),
    case("Decay-tstart-string", lambda: Decay("bws", "0", 1), TypeError, "tstart must be a number, got str"),
    case("Decay-floor-2", lambda: Decay("uws", 0, 1, 1, 2.0), ValueError, r"the decay floor must be in \[0, 1\]"),
    case("Quantizer.uniform-signed-string", lambda: Q.uniform(4, signed="False"), TypeError,
         "signed must be a bool, got str"),
    case("Quantizer.uniform-balanced-int", lambda: Q.uniform(4, balanced=1), TypeError,
         "balanced must be a bool, got int"),
    case("ANALinear-eps-does-not-broadcast", lambda: ANALinear(8, 4, eps=torch.ones(3)), ValueError,
         r"eps of shape \(3,\) does not broadcast to the weight's shape \(4, 8\)"),
    case("ANALinear-eps-grows-the-weight", lambda: ANALinear(8, 4, eps=torch.ones(2, 4, 8)), ValueError,
         r"eps of shape \(2, 4, 8\) does not broadcast to the weight's shape \(4, 8\)"),
    case("ANAConv2d-eps-per-input-channel", lambda: ANAConv2d(3, 4, 3, eps=torch.ones(3, 1, 1, 1)), ValueError,
         r"one eps per output channel has shape \(4, 1, 1, 1\)"),
    case("ANALinear-levels-decreasing", lambda: ANALinear(8, 4, quantizer=Q([1.0, 0.0, -1.0], [-0.5, 0.5])),
         ValueError, r"a weight quantizer's levels must not decrease .* got levels \[1.0, 0.0, -1.0\]"),
    case("AlphaBlendLinear-levels-decreasing", lambda: AlphaBlendLinear(8, 4, quantizer=Q([1.0, -1.0], [0.0])),
         ValueError, "a weight quantizer's levels must not decrease"),
    case("ANALinear-eps-rule-unknown", lambda: ANALinear(8, 4, eps="absmax"), ValueError,
         r"weight eps must be a number, a tensor or one of \('max_abs', 'max_abs_per_channel', 'absmean'"),
    case("ANALinear-eps-twn-binary", lambda: ANALinear(8, 4, quantizer=Q.binary(), eps="twn"), ValueError,
         r"scale.twn: the quantiser has no positive threshold to place, got thresholds \[0.0\]"),
    case("ANALinear-config-and-keyword", lambda: ANALinear(8, 4, sigma=0.2, config=anacuda.ANAConfig()), TypeError,
         "either in config or as keywords, not both"),
    case("ANAActivation-config-dict", lambda: ANAActivation(config={"sigma": 0.1}), TypeError,
         "config must be an anacuda.ANAConfig, got dict"),
    case("ANAConfig-noise-unknown", lambda: anacuda.ANAConfig(noise="gauss"), ValueError, "unknown noise 'gauss'"),
    case("ANAConfig-sigma-negative", lambda: anacuda.ANAConfig(sigma=-0.1), ValueError, "sigma must be >= 0"),
    case("ANAConfig-quantizer-string", lambda: anacuda.ANAConfig(quantizer="ternary"), TypeError,
         "ANAConfig: quantizer must be an anacuda.Quantizer, got str"),
    case("ANAConfig-eps-rule-unknown", lambda: anacuda.ANAConfig(eps="max"), ValueError,
         "weight eps must be a number, a tensor or one of"),
    case("convert-config-and-noise", lambda: convert(mlp(), weight_config=anacuda.ANAConfig(), noise="normal"),
         TypeError, "pass noise, strategy, mu, sigma and backward_noise in the configs"),
    case("convert-inplace-string", lambda: convert(mlp(), inplace="no"), TypeError, "inplace must be a bool, got str"),
    case("convert-weight-eps-unknown-rule", lambda: convert(nn.Sequential(nn.Identity()), weight_eps="mean"),
         ValueError, "weight eps must be a number, a tensor or one of"),
    case("scale.lsq-no-positive-level", lambda: scale.lsq(torch.ones(3), Q([-2.0, -1.0], [-1.5])), ValueError,
         "scale.lsq: the quantiser needs a positive level"),
    case("scale.absmean-x-list", lambda: scale.absmean([1.0], Q.ternary()), TypeError, "x must be a floating tensor"),
]


@pytest.mark.parametrize("call, exc, match", ISSUE12_CASES)
def test_issue12_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
