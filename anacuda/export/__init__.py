"""anacuda.export: ship a frozen model (anacuda.freeze) to another runtime.

    anacuda.export(frozen, "model.gguf", format="gguf")            # llama.cpp TQ2_0 (qtype="TQ1_0")
    anacuda.export(frozen, "out_dir", format="hf-bitnet")          # transformers' packed BitNet
    anacuda.export(frozen, "model.onnx", format="onnx", example_inputs=x)   # ONNX, QDQ weights

What each format preserves exactly is in its module's docstring (gguf, hf_bitnet, onnx) and in
the README's "Deployment" section. The format modules import their optional packages (gguf,
safetensors, onnx + onnxscript) when called and name the pip package when one is missing."""

from __future__ import annotations

import os

FORMATS = ("gguf", "hf-bitnet", "onnx")


def export(model, path, format: str, **options):
    """Write the frozen `model` to `path` in `format` ("gguf", "hf-bitnet" or "onnx") and return
    `path`. Options: gguf: qtype="TQ2_0" | "TQ1_0", arch=, names=; hf-bitnet:
    linear_class="autobitlinear" | "bitlinear"; onnx: example_inputs= (required),
    dynamic_batch=True, opset=. Raises ValueError for a model that is not frozen or a layer the
    format cannot hold, ImportError naming the package to install."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"anacuda.export: path must be a str or os.PathLike, got {type(path).__name__}")
    if format == "gguf":
        from .gguf import export_gguf as write
    elif format == "hf-bitnet":
        from .hf_bitnet import export_hf_bitnet as write
    elif format == "onnx":
        from .onnx import export_onnx as write
    else:
        raise ValueError(f"anacuda.export: format must be one of {FORMATS}, got {format!r}")
    write(model, path, **options)
    return path


__all__ = ["export", "FORMATS"]
