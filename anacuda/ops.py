"""The thin layer over torch.ops.anacuda: the fake (meta) implementations.

Schemas live in csrc/anacuda.cpp, the host entries in csrc/ops, the autograd in
csrc/ops/autograd.cpp, kernels in csrc/cpu and csrc/cuda. Helper ops carry a leading underscore, as torchvision's do. Every op returns a new
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


# --- a learned eps (SPEC §8): grad_x and grad_eps in one pass ----------------------------------
@torch.library.register_fake("anacuda::_ana_backward_eps")
def _ana_backward_eps_fake(grad, x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                           noise_b, mu_b, sigma_b):
    _check_devices(x, (levels, thresholds, grad), eps=eps, mu=mu, sigma=sigma, seed=seed,
                   **{"backward mu": mu_b, "backward sigma": sigma_b})
    return _fresh_like(x), torch.empty(eps.shape, dtype=eps.dtype, device=eps.device)


# --- _ana_coded: the forward and the backward's code in one pass --------------------------------
@torch.library.register_fake("anacuda::_ana_coded")
def _ana_coded_fake(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                    noise_b, mu_b, sigma_b):
    y = _ana_fake(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b, mu_b,
                  sigma_b)
    return y, _fresh_like(x, torch.uint8)


# --- alpha_blend ------------------------------------------------------------------------------
@torch.library.register_fake("anacuda::alpha_blend")
def _alpha_blend_fake(w, levels, thresholds, uniform_grid, eps, alpha):
    _check_devices(w, (levels, thresholds), eps=eps, alpha=alpha)
    return _fresh_like(w)


@torch.library.register_fake("anacuda::_alpha_blend_backward_eps")
def _alpha_blend_backward_eps_fake(grad, w, levels, thresholds, uniform_grid, eps, alpha):
    _check_devices(w, (levels, thresholds, grad), eps=eps, alpha=alpha)
    return torch.empty(eps.shape, dtype=eps.dtype, device=eps.device)


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
