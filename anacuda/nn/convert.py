"""anacuda.convert: an existing PyTorch model, with its activations and weight layers replaced
by their quantised counterparts, keeping the trained weights and biases."""

from __future__ import annotations

import copy
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .. import scale
from ..config import ANAConfig
from ..quantizer import Param, Quantizer, as_param
from .activation import ANAActivation
from .layers import (ANAConv1d, ANAConv2d, ANAConv3d, ANALinear, AlphaBlendConv1d, AlphaBlendConv2d,
                     AlphaBlendConv3d, AlphaBlendLinear, check_weight_args)

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ANA = {nn.Linear: ANALinear, nn.Conv1d: ANAConv1d, nn.Conv2d: ANAConv2d, nn.Conv3d: ANAConv3d}
_BLEND = {nn.Linear: AlphaBlendLinear, nn.Conv1d: AlphaBlendConv1d, nn.Conv2d: AlphaBlendConv2d,
          nn.Conv3d: AlphaBlendConv3d}


def _weight_layer(m: nn.Module, cls, **quant):
    if isinstance(m, nn.Linear):
        new = cls(m.in_features, m.out_features, m.bias is not None, m.weight.device, m.weight.dtype, **quant)
    else:
        new = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                  m.bias is not None, m.padding_mode, m.weight.device, m.weight.dtype, **quant)
    with torch.no_grad():
        new.weight.copy_(m.weight)
        if m.bias is not None:
            new.bias.copy_(m.bias)
    if getattr(new, "eps_mode", None) == scale.LEARNED:
        new.init_scale()  # LSQ's initialisation from the copied weight
    new.train(m.training)
    return new.to(m.weight.device)


def convert(
    model: nn.Module,
    *,
    weights: Optional[str] = "ana",
    activations: Optional[str] = "ana",
    weight_quantizer: Optional[Quantizer] = None,
    activation_quantizer: Optional[Quantizer] = None,
    noise: Optional[str] = None,
    strategy: Optional[str] = None,
    mu: Optional[Param] = None,
    sigma: Optional[Param] = None,
    backward_noise=None,
    weight_eps: Union[str, Param, None] = None,
    activation_eps: Optional[Param] = None,
    weight_config: Optional[ANAConfig] = None,
    activation_config: Optional[ANAConfig] = None,
    alpha: Param = 0.0,
    skip: Iterable[Union[str, type]] = (),
    inplace: bool = False,
) -> nn.Module:
    """Returns `model` with ReLU/ReLU6/Hardtanh replaced by ANAActivation and Linear/Conv1d/2d/3d
    by ANA layers (``weights="ana"``) or alpha-blending layers (``weights="alpha_blend"``);
    ``weights=None`` / ``activations=None`` leave those alone.

    Defaults (ANAConfig's) follow the CVPR 2022 CIFAR-10 setting: ternary weights and
    activations, uniform noise σ = 0.5, strategy mode (the clipped STE); weight eps
    ``scale.DEFAULT_WEIGHT_RULE`` (docs/scales.md), activation eps 1. The quantisation is given
    either as keywords (`noise`, `strategy`, `mu`, `sigma` and `backward_noise` for both sides,
    ``weight_*`` / ``activation_*`` for one) or as ANAConfigs, `weight_config` (its eps may name a
    weight-scale rule) and `activation_config`; a side given by a config takes no keyword. The
    alpha-blending layers take `weight_quantizer`, `weight_eps` and `alpha`. `skip` holds module
    names (as in ``model.named_modules()``, a prefix skips a whole subtree) or module types to
    keep in float, e.g. ``skip=["conv1", "fc"]`` for the first and last layer of a ResNet. The
    model is deep copied unless ``inplace=True``.
    """
    if weights not in ("ana", "alpha_blend", None):
        raise ValueError(f"anacuda.convert: weights must be 'ana', 'alpha_blend' or None, got {weights!r}")
    if activations not in ("ana", None):
        raise ValueError(f"anacuda.convert: activations must be 'ana' or None, got {activations!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"anacuda.convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"anacuda.convert: inplace must be a bool, got {type(inplace).__name__}")
    skip = list(skip) if not isinstance(skip, (str, type)) else [skip]
    for s in skip:
        if not isinstance(s, (str, type)):
            raise TypeError(f"anacuda.convert: skip holds module names or types, got {s!r}")
    names = {n for n, _ in model.named_modules()}
    unknown = [s for s in skip if isinstance(s, str) and s not in names]
    if unknown:
        raise ValueError(f"anacuda.convert: skip names {unknown} are not modules of the model")
    shared = dict(noise=noise, strategy=strategy, mu=mu, sigma=sigma, backward_noise=backward_noise)
    if (weight_config is not None or activation_config is not None) and any(v is not None for v in shared.values()):
        raise TypeError("anacuda.convert: with weight_config or activation_config, pass noise, strategy, mu, sigma "
                        "and backward_noise in the configs, not as keywords; got "
                        f"{sorted(k for k, v in shared.items() if v is not None)}")

    # Every argument is checked now, whatever the model holds: a model with nothing to convert
    # must not hide a typo (the prototypes below are thrown away).
    acfg = ANAConfig.build(activation_config, "anacuda.convert (activations)", quantizer=activation_quantizer,
                           eps=activation_eps, **shared)
    if weights == "ana":
        wcfg = ANAConfig.build(weight_config, "anacuda.convert (weights)", quantizer=weight_quantizer, eps=weight_eps,
                               **shared)
        check_weight_args(wcfg.quantizer, wcfg.eps)
        quant, table = dict(config=wcfg), _ANA
    else:
        if weight_config is not None:
            raise TypeError(f"anacuda.convert: weight_config is for weights='ana', got weights={weights!r}")
        check_weight_args(weight_quantizer, weight_eps)
        as_param(alpha, "alpha", "unit", stored=True)
        quant, table = dict(quantizer=weight_quantizer, alpha=alpha, eps=weight_eps), _BLEND
    if activations:
        ANAActivation(config=acfg)  # eps: a number or a tensor

    def skipped(name: str, m: nn.Module) -> bool:
        return any((isinstance(s, type) and isinstance(m, s)) or
                   (isinstance(s, str) and (name == s or name.startswith(s + "."))) for s in skip)

    model = model if inplace else copy.deepcopy(model)
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if skipped(full, child):
                continue
            new = None
            if activations and type(child) in ACTIVATIONS:
                new = ANAActivation(config=acfg)
                new.to(_device_of(model)).train(child.training)
            elif weights and type(child) in table:
                new = _weight_layer(child, table[type(child)], **quant)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def quantised_modules(model: nn.Module, kinds: Sequence[type] = ()):
    """(name, module) of every anacuda layer in the model, in module order."""
    from .activation import NoiseHyperParams
    from .layers import AlphaBlendWeight

    kinds = tuple(kinds) or (NoiseHyperParams, AlphaBlendWeight)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
