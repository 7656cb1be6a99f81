"""Hugging Face transformers' BitNet layout (transformers/integrations/bitnet.py): each ternary
Linear weight as uint8, four trits (value + 1) per byte, packed along the output dimension in
four blocks of rows (byte row j holds rows j, j + R, j + 2R, j + 3R at bits 0, 2, 4, 6, with
R = out_features / 4), and a `weight_scale` of one value per tensor.

What `weight_scale` means depends on transformers' `linear_class`:
  "autobitlinear" (offline): output = linear(x, trits) · weight_scale, so weight_scale = eps;
                  the weight is represented exactly.
  "bitlinear":    output = linear(x, trits) / (input_scale · weight_scale), so weight_scale =
                  1 / eps, rounded once (float32: relative error at most 2^-24).
Only per-tensor eps fits; out_features must be a multiple of 4 (BitLinear allocates
out_features // 4 packed rows). Activation quantisers are not part of the format: BitLinear
quantises activations to 8 bits per token (absmax) itself. So the 8-bit per-token input
quantiser of a frozen TernaryLinear / BitLinear (FrozenTernaryLinear) is the format's own and is
left out; another one (other bits, μ ≠ 0) is refused. Its RMSNorm becomes transformers'
`rms_norm` (quantization_config use_rms_norm, rms_norm_eps), all layers with one or none."""

from __future__ import annotations

import json
import os
import warnings

import torch

from .common import (QUANTISERS, check_frozen, frozen_keys, frozen_layers, require, require_linear, require_ternary,
                     tensor_scale)
from ..nn.freeze import FrozenTernaryLinear

BITNET_INPUT_LEVELS = tuple(float(v) for v in range(-128, 128))  # transformers' activation_quant: int8

LINEAR_CLASSES = ("autobitlinear", "bitlinear")
VALUES_PER_ITEM = 4


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """transformers' packed layout of 2-bit codes (0…3), shape (out, ...) -> (out / 4, ...)."""
    r = codes.shape[0] // VALUES_PER_ITEM
    blocks = codes.to(torch.uint8).reshape(VALUES_PER_ITEM, r, *codes.shape[1:])
    packed = blocks[0].clone()
    for i in range(1, VALUES_PER_ITEM):
        packed |= blocks[i] << (2 * i)
    return packed


def bitnet_state_dict(model, linear_class: str = "autobitlinear") -> tuple[dict, list[str]]:
    """(tensors, names of the packed layers): the frozen model's state_dict in the BitNet layout."""
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"anacuda.export(format='hf-bitnet'): linear_class must be one of {LINEAR_CLASSES}, "
                         f"got {linear_class!r}")
    check_frozen(model, "hf-bitnet")
    out, packed = {}, []
    for name, m in frozen_layers(model):
        require_linear(name, m, "hf-bitnet")
        require_ternary(name, m, "hf-bitnet")
        eps = tensor_scale(name, m, "hf-bitnet").float()
        if m.weight_shape[0] % VALUES_PER_ITEM:
            raise ValueError(f"anacuda.export(format='hf-bitnet'): layer {name!r} has out_features = "
                             f"{m.weight_shape[0]}; transformers' BitNet layout needs a multiple of {VALUES_PER_ITEM}")
        out[f"{name}.weight"] = pack_rows(m.codes).cpu()  # ternary: code = level + 1
        out[f"{name}.weight_scale"] = (eps if linear_class == "autobitlinear" else 1 / eps).reshape(1).cpu()
        packed.append(name)
        if isinstance(m, FrozenTernaryLinear):
            _check_input_quant(name, m)
            if m.norm is not None:  # transformers' BitLinear / AutoBitLinear call it rms_norm
                out[f"{name}.rms_norm.weight"] = m.norm.weight.detach().cpu().contiguous().clone()
    rms_norm_eps(model)  # one norm setting for all layers, or refused
    # The ternary layers' own norms and input quantisers (written above, or the format's own).
    own = [f"{n}.{part}" for n, m in frozen_layers(model) if isinstance(m, FrozenTernaryLinear)
           for part in ("norm", "input_quant") if getattr(m, part) is not None]
    quantisers = [name for name, m in model.named_modules() if isinstance(m, QUANTISERS) and name not in own]
    if quantisers:
        warnings.warn(f"anacuda.export(format='hf-bitnet'): {len(quantisers)} activation quantisers (first "
                      f"{quantisers[0]!r}) are not part of the format and are left out; transformers' BitLinear "
                      "quantises activations to 8 bits per token instead", stacklevel=3)
    skip = frozen_keys(model) | {k for q in own + quantisers for k in model.get_submodule(q).state_dict(prefix=f"{q}.")}
    for key, t in model.state_dict().items():
        if key not in skip:
            out[key] = t.detach().cpu().contiguous().clone()
    return out, packed


def _check_input_quant(name: str, m: FrozenTernaryLinear) -> None:
    q = m.input_quant
    if q is None:
        warnings.warn(f"anacuda.export(format='hf-bitnet'): layer {name!r} has no input quantiser "
                      "(activation_bits=None); transformers' BitLinear quantises its input to 8 bits per token",
                      stacklevel=4)
    elif tuple(q.levels.tolist()) != BITNET_INPUT_LEVELS or q.mu.item() != 0:
        raise ValueError(f"anacuda.export(format='hf-bitnet'): layer {name!r} quantises its input on "
                         f"{q.levels.numel()} levels with mu = {q.mu.item():g}; transformers' BitLinear quantises "
                         "inputs to 8 bits per token (levels -128 ... 127, absmax) itself and holds no other")


def rms_norm_eps(model):
    """None when no frozen ternary Linear has an RMSNorm, else its eps (transformers' rms_norm_eps);
    refused unless all have one, with one eps (quantization_config holds one setting)."""
    layers = [(n, m) for n, m in frozen_layers(model) if isinstance(m, FrozenTernaryLinear)]
    with_norm = [(n, m) for n, m in layers if m.norm is not None]
    if not with_norm:
        return None
    if len(with_norm) < len(layers):
        bare = next(n for n, m in layers if m.norm is None)
        raise ValueError(f"anacuda.export(format='hf-bitnet'): layer {with_norm[0][0]!r} has an RMSNorm and layer "
                         f"{bare!r} none; transformers' BitNet config (use_rms_norm) has one setting for all layers")
    for n, m in with_norm:
        if not isinstance(m.norm, torch.nn.RMSNorm) or m.norm.weight is None:
            raise ValueError(f"anacuda.export(format='hf-bitnet'): layer {n!r} has the norm {m.norm!r}; transformers' "
                             "rms_norm is an RMSNorm with a weight")
    eps = {torch.finfo(m.norm.weight.dtype).eps if m.norm.eps is None else m.norm.eps for _, m in with_norm}
    if len(eps) > 1:
        raise ValueError(f"anacuda.export(format='hf-bitnet'): the layers' RMSNorms have the eps values {sorted(eps)}; "
                         "transformers' BitNet config (rms_norm_eps) holds one")
    return eps.pop()


def export_hf_bitnet(model, path, *, linear_class: str = "autobitlinear") -> None:
    """Write the BitNet-layout state_dict as safetensors: to `path` if it ends in .safetensors,
    else to `path`/model.safetensors, with `path`/config.json when the model carries a
    transformers config (its quantization_config set so that from_pretrained loads it)."""
    st = require("safetensors.torch", "safetensors", "hf-bitnet")
    tensors, packed = bitnet_state_dict(model, linear_class)
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        st.save_file(tensors, path, metadata={"format": "pt"})
        return
    os.makedirs(path, exist_ok=True)
    st.save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        float_linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        cfg = config.to_dict()
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                      "quantization_mode": "offline", "modules_to_not_convert": float_linear}
        norm_eps = rms_norm_eps(model)
        if norm_eps is not None:
            cfg["quantization_config"].update(use_rms_norm=True, rms_norm_eps=norm_eps)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
