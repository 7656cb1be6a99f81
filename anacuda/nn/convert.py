"""anacuda.convert: an existing PyTorch model, with its activations and weight layers replaced
by their quantised counterparts, keeping the trained weights and biases. CNNs by default;
transformers with ``recipe=`` (anacuda.nn.convert_transformer)."""

from __future__ import annotations

import copy
import warnings
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .. import scale
from ..config import ANAConfig
from ..quantizer import Param, Quantizer, as_param
from .activation import ANAActivation
from .convert_transformer import RECIPES, ConversionReport, account_for_the_rest, convert_transformer, warn_float
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
    recipe: Optional[str] = None,
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
    head: Union[str, Sequence[str], None] = "auto",
    linear_options: Optional[dict] = None,
    inplace: bool = False,
    report: bool = False,
):
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

    Transformers: ``recipe="bitnet"`` makes every Linear layer (subclasses included, Hugging Face's
    Conv1D with its weight transposed, and the projections of torch.nn.MultiheadAttention, which
    becomes TernaryMultiheadAttention) a BitLinear: BitNet b1.58's ternary absmean weights and 8-bit
    per-token absmax inputs, hard forward, unclipped STE. ``recipe="bitnet_ana"``: TernaryLinear,
    the same quantisers trained with ANA; `noise`, `strategy`, `mu`, `sigma` and `backward_noise`
    configure it (TernaryLinear's defaults otherwise). `linear_options`: further keyword
    arguments of the layer (``weight_scale``, also given as `weight_eps`, e.g. "learned" or
    "learned_per_channel" for LSQ's learned scale; ``activation_bits``, ``activation_sigma``, ...;
    ``norm=True`` adds BitNet's RMSNorm in front of each layer, off by default as it changes the
    function the weights were trained for). Weights and biases are the model's own Parameter
    objects (Conv1D's: a transposed copy), so tied weights stay tied. Activation functions (GELU,
    SiLU, ...) stay as they are: what they output is quantised where it enters a converted
    Linear (its input_quant), as in BitNet. Embeddings, norms and the output head stay in float:
    ``head="auto"`` finds the head (a Hugging Face model's output embeddings, else a Linear tied
    to an embedding, else the last Linear outside attention and transformer layers), a name or
    list of names gives it, ``head=None`` converts it too. torch's fused TransformerEncoder
    (Layer) fast path is switched off on converted layers, so that nothing runs in float.

    Returns the converted model, or ``(model, report)`` with ``report=True``: a ConversionReport
    of what was converted, what stays in float and why, and which activations are quantised.
    Weights a user would expect quantised that convert cannot convert (a Linear subclass with its
    own forward, a raw weight Parameter, a convolution under a recipe, and for the default
    recipe MultiheadAttention and Linear subclasses) are named in a warning, as are activation
    functions the default recipe leaves in float; `skip` silences the warning for weights.
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"anacuda.convert: recipe must be None (CNNs) or one of {sorted(RECIPES)}, got {recipe!r}")
    if not isinstance(report, bool):
        raise TypeError(f"anacuda.convert: report must be a bool, got {type(report).__name__}")
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
    if recipe is not None:
        return _convert_transformer(model, recipe, shared, skip, head, linear_options, inplace, report, dict(
            weights=weights != "ana", activations=activations != "ana", weight_quantizer=weight_quantizer,
            activation_quantizer=activation_quantizer, weight_eps=weight_eps, activation_eps=activation_eps,
            weight_config=weight_config, activation_config=activation_config,
            alpha=not (isinstance(alpha, (int, float)) and alpha == 0)))
    if head != "auto" or linear_options is not None:
        raise TypeError("anacuda.convert: head and linear_options are for the transformer recipes (recipe='bitnet' "
                        "or 'bitnet_ana')")
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
    rep = ConversionReport()
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if skipped(full, child):
                if not any(full.startswith(k + ".") for k in rep.kept_float):
                    rep.kept_float[full] = f"{type(child).__name__}: in skip"
                continue
            new = None
            if activations and type(child) in ACTIVATIONS:
                new = ANAActivation(config=acfg)
                new.to(_device_of(model)).train(child.training)
                rep.activations_quantised[full] = f"{type(child).__name__} -> ANAActivation"
            elif weights and type(child) in table:
                new = _weight_layer(child, table[type(child)], **quant)
            if new is not None:
                rep.converted[full] = f"{type(child).__name__} -> {type(new).__name__}"
                setattr(parent, child_name, new)
    _warn_cnn(model, rep, weights, activations)
    return (model, rep) if report else model


def _warn_cnn(model: nn.Module, rep: ConversionReport, weights, activations) -> None:
    """The default recipe converts exact types only: say what a transformer holds that it leaves
    in float (MultiheadAttention, Linear subclasses, GELU, SiLU, ...), and where to go instead."""
    unexpected = account_for_the_rest(model, rep, "convert replaces ReLU, ReLU6 and Hardtanh only "
                                      "(recipe='bitnet' quantises the inputs of Linear layers)")
    hint = ("for transformers, convert(model, recipe='bitnet') or recipe='bitnet_ana' quantises them "
            "(and the inputs of every Linear)")
    if weights and unexpected:
        warn_float(unexpected + [hint], stacklevel=3)
    if activations and rep.activations_left:
        warnings.warn(f"anacuda.convert: these activations stay in float: {sorted(rep.activations_left)} (convert "
                      f"replaces ReLU, ReLU6 and Hardtanh); {hint}.", stacklevel=3)


def _convert_transformer(model, recipe, shared, skip, head, linear_options, inplace, report, cnn_args):
    # weight_eps reads as the ternary layers' weight_scale (e.g. "learned", "absmean_per_channel").
    weight_scale = cnn_args.pop("weight_eps", None)
    given = sorted(k for k, v in cnn_args.items() if v is not None and v is not False)
    if given:
        raise TypeError(f"anacuda.convert: {given} are for the default recipe (CNNs), not recipe={recipe!r}; "
                        "configure the ternary layers with noise, strategy, mu, sigma, backward_noise and "
                        "linear_options")
    if linear_options is not None and not isinstance(linear_options, dict):
        raise TypeError(f"anacuda.convert: linear_options must be a dict, got {type(linear_options).__name__}")
    options = dict(linear_options or {})
    if weight_scale is not None:
        if "weight_scale" in options:
            raise TypeError("anacuda.convert: weight_eps and linear_options['weight_scale'] are the same option; "
                            "give one")
        options["weight_scale"] = weight_scale
    noise_args = {k: v for k, v in shared.items() if v is not None}
    if noise_args and recipe == "bitnet":
        raise TypeError(f"anacuda.convert: recipe='bitnet' is BitNet's fixed recipe (sigma = 0, unclipped STE); "
                        f"got {sorted(noise_args)}: use recipe='bitnet_ana' to train with ANA")
    clash = sorted(set(noise_args) & set(options))
    if clash:
        raise TypeError(f"anacuda.convert: {clash} given both as keywords and in linear_options")
    options.update(noise_args)
    model, rep, cannot = convert_transformer(model, recipe, head=head, skip=skip, linear_options=options,
                                             inplace=inplace)
    if cannot:
        warn_float(cannot, stacklevel=3)
    return (model, rep) if report else model


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def quantised_modules(model: nn.Module, kinds: Sequence[type] = ()):
    """(name, module) of every anacuda layer in the model, in module order."""
    from .activation import NoiseHyperParams
    from .layers import AlphaBlendWeight

    kinds = tuple(kinds) or (NoiseHyperParams, AlphaBlendWeight)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
