"""2-bit codes, four per byte (SPEC §10): the storage of frozen weights on grids of at most four
levels (ternary: code = level + 1). Code i of the flattened tensor sits in byte i // 4 at bits
2·(i % 4) … 2·(i % 4) + 1 (the first code in the low bits); the last byte is zero-padded.
Plain PyTorch ops only, so a model that unpacks in its forward exports with torch.export."""

from __future__ import annotations

import torch

CODES_PER_BYTE = 4
_SHIFTS = (0, 2, 4, 6)


def pack2(codes: torch.Tensor) -> torch.Tensor:
    """The codes (integers 0…3, any shape) as a flat uint8 tensor of ceil(numel / 4) bytes."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"anacuda.export.pack2: codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) > 3:
        raise ValueError(f"anacuda.export.pack2: codes must be in 0…3 (2 bits), got a maximum of {int(flat.max())}")
    pad = (-flat.numel()) % CODES_PER_BYTE
    quads = torch.cat([flat, flat.new_zeros(pad)]).view(-1, CODES_PER_BYTE)
    out = quads[:, 0].clone()
    for j in range(1, CODES_PER_BYTE):
        out |= quads[:, j] << _SHIFTS[j]
    return out


def unpack2(packed: torch.Tensor, shape) -> torch.Tensor:
    """The uint8 codes of `shape` that pack2 stored in `packed`."""
    shape = torch.Size(shape)
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 3
    return codes.reshape(-1)[: shape.numel()].reshape(shape)
