"""The thin layer over torch.ops.anacuda: fake (meta) implementations and autograd.

Schemas live in csrc/anacuda.cpp, the host entries in csrc/ops, kernels in csrc/cpu and
csrc/cuda. Helper ops carry a leading underscore, as torchvision's do. Every op returns a new
tensor of its input's shape and dtype in the input's memory format (contiguous, channels_last or
channels_last_3d, as ``suggest_memory_format`` says; csrc/ops/memory_order.h).
"""

import torch
from torch._prims_common import suggest_memory_format

_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _fresh_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output of x's shape (and dtype, unless given) in x's memory format, as the kernels give."""
    torch._check(x.dtype in _FLOATS or dtype is not None,
                 lambda: f"anacuda: input must be a floating tensor, got {x.dtype}")
    return torch.empty_like(x, dtype=dtype, memory_format=suggest_memory_format(x))


def _check_devices(x: torch.Tensor, tables=(), **params) -> None:
    """The kernels' device rules, in the fakes too: a real input with one argument on the meta
    device would otherwise reach a fake and get uninitialised memory as its result."""
    for t in tables:
        if t.device != x.device:
            raise RuntimeError(f"anacuda: levels and thresholds must be on the input's device {x.device}, "
                               f"got {t.device}")
    for name, t in params.items():
        if t is not None and t.device != x.device and t.device.type != "cpu":
            raise RuntimeError(f"anacuda: {name} is on {t.device} but the input is on {x.device}; "
                               "hyper-parameters live on the host or on the input's device")


# --- ana -------------------------------------------------------------------------------------
@torch.library.register_fake("anacuda::ana")
def _ana_fake(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
              noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds), eps=eps, mu=mu, sigma=sigma, seed=seed, **{"backward mu": mu_b,
                   "backward sigma": sigma_b})
    return _fresh_like(x)


@torch.library.register_fake("anacuda::_ana_backward")
def _ana_backward_fake(grad, x, levels, thresholds, uniform_grid, eps, noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds, grad), eps=eps, **{"backward mu": mu_b, "backward sigma": sigma_b})
    return _fresh_like(x)


@torch.library.register_fake("anacuda::_ana_code")
def _ana_code_fake(x, levels, thresholds, eps, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds), eps=eps, **{"backward mu": mu_b, "backward sigma": sigma_b})
    return _fresh_like(x, torch.uint8)


@torch.library.register_fake("anacuda::_ana_backward_code")
def _ana_backward_code_fake(grad, code, levels, sigma_b):
    _check_devices(grad, (levels, code), **{"backward sigma": sigma_b})
    return _fresh_like(code, grad.dtype)  # the code has the input's layout


#: A uniform backward noise on a quantiser of at most this many thresholds saves a 1-byte code
#: per element for the backward instead of the input (see csrc/common/box_code.h).
CODE_MAX_THRESHOLDS = 15


def uses_code(noise_b: str, thresholds: torch.Tensor) -> bool:
    """Whether the backward needs only the 1-byte code (_ana_coded) instead of x."""
    return noise_b == "uniform" and thresholds.numel() <= CODE_MAX_THRESHOLDS


# ana saves its input; the coded backward is _ana_coded's (functional.ana chooses between them).
def _ana_setup_context(ctx, inputs, output):
    x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b, mu_b, sigma_b = inputs
    ctx.save_for_backward(x, levels, thresholds, eps, mu_b, sigma_b, mu, sigma, seed)
    ctx.uniform_grid = uniform_grid
    ctx.noise_b = noise_b
    ctx.forward = (noise, strategy, training)  # a learned eps's backward recomputes g (SPEC §8)


def _ana_backward(ctx, grad):
    if ctx.needs_input_grad[4]:
        return _ana_backward_learned_eps(ctx, grad)
    if not ctx.needs_input_grad[0]:
        return (None,) * 14
    x, levels, thresholds, eps, mu_b, sigma_b, _mu, _sigma, _seed = ctx.saved_tensors
    gx = torch.ops.anacuda._ana_backward(grad, x, levels, thresholds, ctx.uniform_grid, eps, ctx.noise_b, mu_b,
                                         sigma_b)
    return (gx,) + (None,) * 13


# --- a learned eps (SPEC §8): grad_x and grad_eps in one pass ----------------------------------
@torch.library.register_fake("anacuda::_ana_backward_eps")
def _ana_backward_eps_fake(grad, x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                           noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds, grad), eps=eps, mu=mu, sigma=sigma, seed=seed,
                   **{"backward mu": mu_b, "backward sigma": sigma_b})
    return _fresh_like(x), torch.empty(eps.shape, dtype=eps.dtype, device=eps.device)


def _ana_backward_learned_eps(ctx, grad):
    x, levels, thresholds, eps, mu_b, sigma_b, mu, sigma, seed = ctx.saved_tensors
    noise, strategy, training = ctx.forward
    gx, geps = torch.ops.anacuda._ana_backward_eps(grad, x, levels, thresholds, ctx.uniform_grid, eps, noise, mu,
                                                   sigma, strategy, training, seed, ctx.noise_b, mu_b, sigma_b)
    return (gx if ctx.needs_input_grad[0] else None, None, None, None, geps) + (None,) * 9


torch.library.register_autograd("anacuda::ana", _ana_backward, setup_context=_ana_setup_context)


# --- _ana_coded: the forward and the backward's code in one pass --------------------------------
@torch.library.register_fake("anacuda::_ana_coded")
def _ana_coded_fake(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                    noise_b, mu_b, sigma_b):
    y = _ana_fake(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b, mu_b,
                  sigma_b)
    return y, _fresh_like(x, torch.uint8)


# _ana_coded's autograd is C++ (csrc/ops/autograd.cpp: torch.library's Python registration costs
# more per call than a small layer's kernel): grad_x = _ana_backward_code(grad, code, levels, sigma_b).


# --- alpha_blend ------------------------------------------------------------------------------
@torch.library.register_fake("anacuda::alpha_blend")
def _alpha_blend_fake(w, levels, thresholds, uniform_grid, eps, alpha):
    _check_devices(w, (levels, thresholds), eps=eps, alpha=alpha)
    return _fresh_like(w)


def _alpha_blend_setup_context(ctx, inputs, output):
    w, levels, thresholds, uniform_grid, eps, alpha = inputs
    ctx.save_for_backward(alpha, w, levels, thresholds, eps)
    ctx.uniform_grid = uniform_grid


def _alpha_blend_backward(ctx, grad):
    alpha, w, levels, thresholds, eps = ctx.saved_tensors
    # A learned eps (SPEC §8): alpha * Q(w / eps), reduced to eps's shape in the kernel.
    geps = None
    if ctx.needs_input_grad[4]:
        geps = torch.ops.anacuda._alpha_blend_backward_eps(grad, w, levels, thresholds, ctx.uniform_grid, eps, alpha)
    gw = _blend_grad(grad, alpha) if ctx.needs_input_grad[0] else None
    return gw, None, None, None, geps, None


def _blend_grad(grad, alpha):
    """(1 - alpha) * grad: no gradient through the quantised term (SPEC §6), one multiply, no kernel
    of its own; half types computed in float32."""
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return (grad.to(acc) * (1 - alpha.to(acc).reshape(()))).to(grad.dtype)


@torch.library.register_fake("anacuda::_alpha_blend_backward_eps")
def _alpha_blend_backward_eps_fake(grad, w, levels, thresholds, uniform_grid, eps, alpha):
    _check_devices(w, (levels, thresholds, grad), eps=eps, alpha=alpha)
    return torch.empty(eps.shape, dtype=eps.dtype, device=eps.device)


torch.library.register_autograd("anacuda::alpha_blend", _alpha_blend_backward, setup_context=_alpha_blend_setup_context)


# --- dynamic scales (SPEC §9): csrc/ops/dynamic.cpp -------------------------------------------
def _dynamic_eps_shape(x, rule):
    from .quantizer import check_scale_rule, compute_dtype, scale_shape

    check_scale_rule(rule, x.shape)
    return x.new_empty(scale_shape(x.shape, rule), dtype=compute_dtype(x.dtype))


@torch.library.register_fake("anacuda::_dynamic_eps")
def _dynamic_eps_fake(x, rule, reach, r_min):
    _fresh_like(x)  # the dtype check
    return _dynamic_eps_shape(x, rule)


@torch.library.register_fake("anacuda::_ana_dynamic")
def _ana_dynamic_fake(x, levels, thresholds, uniform_grid, rule, reach, r_min, noise, mu, sigma, strategy, training,
                      seed, noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds), mu=mu, sigma=sigma, seed=seed, **{"backward mu": mu_b,
                   "backward sigma": sigma_b})
    return _fresh_like(x), _dynamic_eps_shape(x, rule)


@torch.library.register_fake("anacuda::_ana_dynamic_backward")
def _ana_dynamic_backward_fake(grad, x, eps, levels, thresholds, uniform_grid, noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds, grad, eps), **{"backward mu": mu_b, "backward sigma": sigma_b})
    return _fresh_like(x)


@torch.library.register_fake("anacuda::_alpha_blend_dynamic")
def _alpha_blend_dynamic_fake(w, levels, thresholds, uniform_grid, rule, reach, r_min, alpha):
    _check_devices(w, (levels, thresholds), alpha=alpha)
    _dynamic_eps_shape(w, rule)
    return _fresh_like(w)


# The scale is a constant of the step (no gradient through it, SPEC §9): the backward is §5's at it.
# The identity backward needs no x: a scale is NaN exactly where its group holds a NaN or +-inf
# (SPEC §9), so "NaN where x / eps is NaN" is "NaN where eps is", and grad in x's place gives it.
# Nothing of the input's size is kept for it (as BitNet's x + (q - x).detach() keeps nothing).
def _ana_dynamic_setup_context(ctx, inputs, output):
    x, levels, thresholds, uniform_grid = inputs[:4]
    noise_b, mu_b, sigma_b = inputs[13:]
    ctx.save_for_backward(None if noise_b == "identity" else x, output[1], levels, thresholds, mu_b, sigma_b)
    ctx.mark_non_differentiable(output[1])
    ctx.uniform_grid = uniform_grid
    ctx.noise_b = noise_b


def _ana_dynamic_backward(ctx, grad, _grad_eps):
    if not ctx.needs_input_grad[0]:
        return (None,) * 16
    x, eps, levels, thresholds, mu_b, sigma_b = ctx.saved_tensors
    gx = torch.ops.anacuda._ana_dynamic_backward(grad, grad if x is None else x, eps, levels, thresholds,
                                                 ctx.uniform_grid, ctx.noise_b, mu_b, sigma_b)
    return (gx,) + (None,) * 15


torch.library.register_autograd("anacuda::_ana_dynamic", _ana_dynamic_backward,
                                setup_context=_ana_dynamic_setup_context)


def _alpha_blend_dynamic_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[7])


def _alpha_blend_dynamic_backward(ctx, grad):
    (alpha,) = ctx.saved_tensors
    return (_blend_grad(grad, alpha) if ctx.needs_input_grad[0] else None,) + (None,) * 7


torch.library.register_autograd("anacuda::_alpha_blend_dynamic", _alpha_blend_dynamic_backward,
                                setup_context=_alpha_blend_dynamic_setup_context)
