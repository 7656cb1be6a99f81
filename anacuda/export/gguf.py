"""GGUF with llama.cpp's ternary types: TQ2_0 (2 bits per weight, 66 bytes per 256) and TQ1_0
(base-3, 54 bytes per 256), one float16 scale `d` per 256-weight block of a row.

A frozen ternary Linear weight maps exactly when eps is one value per tensor or per output row
(a block never straddles rows): its codes are the block's trits and d = float16(eps). The only
change is that rounding of eps (relative error at most 2^-11 in float16's normal range; other
eps are refused). Every other state_dict entry is written as it is (float32 for bfloat16). The
trits are packed by the gguf package's own quantiser, then d is set from eps. A frozen converted
transformer's layers are weight matrices too: FrozenTernaryLinear (its RMSNorm and per-token
input quantiser's buffers written as they are) and TernaryMultiheadAttention's in-projection
(FrozenProjection, as `<layer>.weight`)."""

from __future__ import annotations

import numpy as np
import torch

from .common import check_frozen, frozen_keys, frozen_layers, require, require_linear, require_ternary, row_scales

QTYPES = ("TQ2_0", "TQ1_0")
GGML_MAX_NAME = 64  # llama.cpp's limit, the terminating NUL included
FP16_NORMAL = (2.0 ** -14, 65504.0)


def _name(names, key: str) -> str:
    out = key if names is None else (names(key) if callable(names) else names.get(key, key))
    if not isinstance(out, str) or not out or len(out.encode()) >= GGML_MAX_NAME:
        raise ValueError(f"anacuda.export(format='gguf'): tensor name {out!r} (for {key!r}) must be a non-empty string "
                         f"of at most {GGML_MAX_NAME - 1} bytes; map long names with names=")
    return out


def ternary_blocks(gguf, name: str, m, qtype) -> np.ndarray:
    """The weight of frozen Linear `m` as GGUF blocks of `qtype` (uint8, one row per output row)."""
    require_linear(name, m, "gguf")
    require_ternary(name, m, "gguf")
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = m.weight_shape
    if cols % block:
        raise ValueError(f"anacuda.export(format='gguf'): layer {name!r} has in_features = {cols}; "
                         f"{qtype.name} needs a multiple of {block}")
    eps = row_scales(name, m, "gguf").cpu().double()
    lo, hi = FP16_NORMAL
    if not ((eps >= lo) & (eps <= hi)).all():
        raise ValueError(f"anacuda.export(format='gguf'): layer {name!r} has eps in [{eps.min().item():.3g}, "
                         f"{eps.max().item():.3g}]; {qtype.name} stores it as float16, whose normal range is "
                         f"[{lo:.3g}, {hi:g}]")
    trits = (m.codes.cpu().to(torch.int8) - 1).float().numpy()  # ternary: code = level + 1
    blocks = gguf.quants.quantize(trits, qtype).reshape(rows, cols // block, size)
    # gguf set d = max|trit| (1, or 0 in an all-zero block); d is the last 2 bytes of each block.
    blocks[..., -2:] = eps.numpy().astype(np.float16).view(np.uint8).reshape(rows, 1, 2)
    return blocks.reshape(rows, -1)


def export_gguf(model, path, *, qtype: str = "TQ2_0", arch: str = "anacuda", names=None) -> None:
    """Write the frozen model's state_dict to a GGUF file, ternary Linear weights as `qtype`
    (under the name `<layer>.weight`). `names` (a dict or a function) maps state_dict keys to
    GGUF tensor names, for example to llama.cpp's blk.N.attn_q.weight."""
    gguf = require("gguf", "gguf", "gguf")
    check_frozen(model, "gguf")
    if qtype not in QTYPES:
        raise ValueError(f"anacuda.export(format='gguf'): qtype must be one of {QTYPES}, got {qtype!r}")
    qt = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("anacuda.source", "anacuda.freeze")
    for name, m in frozen_layers(model):
        writer.add_tensor(_name(names, f"{name}.weight"), ternary_blocks(gguf, name, m, qt), raw_dtype=qt)
    skip = frozen_keys(model)
    for key, t in model.state_dict().items():
        if key in skip:
            continue
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact; numpy has no bfloat16
        writer.add_tensor(_name(names, key), t.reshape(t.shape or (1,)).contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
