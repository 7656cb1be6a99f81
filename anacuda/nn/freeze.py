"""anacuda.freeze: the deployed network. Weights are stored as integer codes (indices of the
quantiser's levels) plus eps, at 2 bits per weight (four codes per byte, SPEC §10) on grids of
at most four levels such as ternary; activations are hard quantisers. The ternary layers of
transformers (TernaryLinear / BitLinear, TernaryMultiheadAttention's in-projection) keep their
dynamic weight scale as the eps of the trained weight and their per-token input quantiser as
HardTokenQuantizer. Plain PyTorch ops only
(no searchsorted), so the result runs without the extension's kernels and exports with
torch.export and to ONNX (anacuda.export)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import distributed
from ..export.packing import CODES_PER_BYTE, pack2, unpack2
from ..quantizer import SCALE_FLOOR, compute_dtype, grid_reach
from ..scale import LEARNED
from .activation import ANAActivation
from .attention import TernaryMultiheadAttention
from .layers import AlphaBlendWeight, ANAWeight
from .ternary import DynamicScaleANA, TernaryLinear


def _code_dtype(n: int) -> torch.dtype:
    return torch.uint8 if n <= 256 else (torch.int16 if n <= 32768 else torch.int32)


def level_index(thresholds: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The number of thresholds at or below each u (SPEC §1: on a threshold goes up), i.e.
    torch.searchsorted(thresholds, u, right=True) bit for bit, as a branch-free binary search of
    comparisons and gathers: log2(K) + 1 passes, and ops that ONNX has (it has no searchsorted).
    NaN compares false and gets 0 (the caller puts NaN back)."""
    k = thresholds.numel()
    idx = torch.zeros_like(u, dtype=torch.long)
    step = 1 << (k.bit_length() - 1)  # the largest power of two <= K; the steps sum to >= K
    while step:
        cand = idx + step
        idx = torch.where((cand <= k) & (u >= thresholds[(cand - 1).clamp(max=k - 1)]), cand, idx)
        step >>= 1
    return idx


class HardQuantizer(nn.Module):
    """y = eps · Q(x / eps − μ): the eval-mode ANAActivation, in plain PyTorch."""

    def __init__(self, act: ANAActivation):
        super().__init__()
        q = act.quantizer
        self.register_buffer("levels", q._levels.to(torch.float32))
        self.register_buffer("thresholds", q._thresholds.to(torch.float32))
        self.register_buffer("eps", act.eval_eps().float().clone())
        self.register_buffer("mu", act.mu.detach().float().clone())

    def forward(self, x):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        eps = self.eps.to(acc)
        u = x.to(acc) / eps - self.mu.to(acc)
        y = eps * self.levels.to(acc)[level_index(self.thresholds.to(acc), u)]
        return torch.where(torch.isnan(u), u, y).to(x.dtype)


class HardTokenQuantizer(nn.Module):
    """The eval-mode per-token input quantiser of TernaryLinear / BitLinear (DynamicScaleANA with
    the rule absmax_per_token), in plain PyTorch: eps = max(max |x| over the last dimension,
    r_min) / c (SPEC §9; NaN for a token holding a NaN or ±inf), then y = eps · Q(x / eps − μ)
    as HardQuantizer, with the op's arithmetic in the op's order: equal to it bit for bit."""

    def __init__(self, act: DynamicScaleANA):
        super().__init__()
        if act.rule != "absmax_per_token":
            raise ValueError(f"anacuda.freeze: HardTokenQuantizer freezes the rule 'absmax_per_token', got "
                             f"{act.rule!r}")
        q = act.quantizer
        # In float64, rounded to the input's compute dtype in forward as the op rounds them (r_min =
        # 1e-5 differs in float32 and float64). Tensors, not Python numbers: CUDA divides by a host
        # scalar as a product with its reciprocal.
        self.register_buffer("levels", q._levels.to(torch.float64))
        self.register_buffer("thresholds", q._thresholds.to(torch.float64))
        self.register_buffer("mu", act.mu.detach().clone())
        self.register_buffer("reach", torch.tensor(grid_reach(q), dtype=torch.float64))
        self.register_buffer("r_min", torch.tensor(SCALE_FLOOR, dtype=torch.float64))

    def forward(self, x):
        acc = compute_dtype(x.dtype)
        xa = x.to(acc)
        r = xa.abs().amax(dim=-1, keepdim=True)
        r = torch.where(torch.isfinite(r), r, torch.full_like(r, float("nan")))
        eps = torch.maximum(r, self.r_min.to(acc)) / self.reach.to(acc)  # maximum keeps a NaN
        u = xa / eps - self.mu.to(acc)
        y = eps * self.levels.to(acc)[level_index(self.thresholds.to(acc), u)]
        return torch.where(torch.isnan(u), u, y).to(x.dtype)


def _dynamic_weight(weight: torch.Tensor, quant: DynamicScaleANA):
    """(eps, levels, the eval-mode quantised weight) of a weight quantised by a DynamicScaleANA:
    eps that of the eval forward on the trained weight (a rule's computed once by the op, or the
    learned one floored)."""
    with torch.no_grad():
        w = weight.detach()
        eps = quant.eval_scale(w)
        levels = quant.quantizer._levels.to(device=w.device, dtype=compute_dtype(w.dtype))
        return eps.to(levels.dtype), levels, quant.eval()(w)


class _FrozenWeight:
    """The weight as codes + levels + eps. Grids of at most four levels store the codes packed
    (buffer `packed`, 2 bits each), larger ones as integers (buffer `codes`); `codes` reads
    either way. `weight` is levels[codes] · eps, computed on access and read-only."""

    def _freeze_from(self, layer):
        with torch.no_grad():
            eps = layer.weight_eps().detach().float()
            levels = layer.quantizer._levels.to(device=layer.weight.device, dtype=torch.float32)
            wq = layer.eval().quantized_weight().detach()
        self._store(layer.weight, eps, levels, wq)

    def _store(self, weight, eps, levels, wq):
        """Codes + levels + eps of `wq`, the eval-mode quantised `weight`: levels[codes] · eps in
        eps's dtype, cast to the weight's (frozen_weight), must give it back exactly."""
        with torch.no_grad():
            wq = wq.detach().to(weight.dtype)
            # The nearest level of each entry.
            mid = (levels[1:] + levels[:-1]) / 2
            codes = torch.searchsorted(mid.contiguous(), (wq.to(eps.dtype) / eps).contiguous())
            if not torch.equal((levels[codes] * eps).to(weight.dtype), wq):
                raise RuntimeError("anacuda.freeze: the quantised weight is not on the quantiser's levels "
                                   "(levels must be increasing for freeze)")
        self.weight_shape = tuple(weight.shape)
        if levels.numel() <= CODES_PER_BYTE:
            self.register_buffer("packed", pack2(codes))
        else:
            self.register_buffer("codes", codes.to(_code_dtype(levels.numel())))
        self.register_buffer("levels", levels)
        self.register_buffer("eps", eps)
        self.weight_dtype = weight.dtype

    @property
    def codes(self) -> torch.Tensor:
        """The integer codes (indices into `levels`), in the weight's shape."""
        if "packed" in self._buffers:
            return unpack2(self._buffers["packed"], self.weight_shape)
        if "codes" in self._buffers:
            return self._buffers["codes"]
        raise AttributeError("codes")  # before _freeze_from ran (hasattr in register_buffer)

    def frozen_weight(self) -> torch.Tensor:
        return (self.levels[self.codes.long()] * self.eps).to(self.weight_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, levels[codes] · eps (read-only: a property without setter),
        for code that inspects models as it would a torch.nn Linear/Conv."""
        return self.frozen_weight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint frozen before codes were packed holds `codes` (uint8) where a grid of at
        # most four levels now keeps `packed`: pack it, so that saved models still load exactly.
        if "packed" in self._buffers and prefix + "codes" in state_dict and prefix + "packed" not in state_dict:
            state_dict[prefix + "packed"] = pack2(state_dict.pop(prefix + "codes").long())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FrozenLinear(_FrozenWeight, nn.Module):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._freeze_from(layer)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.frozen_weight(), self.bias)


class FrozenTernaryLinear(FrozenLinear):
    """TernaryLinear / BitLinear frozen: y = linear(A(norm(x)), levels[codes] · eps, bias), the
    ternary codes packed at 2 bits per weight, eps the weight scale (absmean, ... per tensor or
    per output channel) of the trained weight, A its per-token input quantiser as a
    HardTokenQuantizer (or none), norm its RMSNorm (or none)."""

    def __init__(self, layer: TernaryLinear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._store(layer.weight, *_dynamic_weight(layer.weight, layer.weight_quant))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.norm = layer.norm
        self.input_quant = None if layer.input_quant is None else HardTokenQuantizer(layer.input_quant)

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
        if self.input_quant is not None:
            x = self.input_quant(x)
        return super().forward(x)


class FrozenProjection(_FrozenWeight, nn.Module):
    """A projection of TernaryMultiheadAttention frozen (its in-projection, or q/k/v): the weight
    that the attention held in float (in_proj_weight, ...; freeze removes it) as codes + eps, the
    input's RMSNorm and quantiser kept. The attention reads it as it reads a live projection:
    `inputs(x)` and `weight_quant(weight)`, here the frozen weight (weight is None)."""

    def __init__(self, proj, weight: torch.Tensor):
        super().__init__()
        self._store(weight, *_dynamic_weight(weight, proj.weight_quant))
        self.norm = proj.norm
        self.input_quant = None if proj.input_quant is None else HardTokenQuantizer(proj.input_quant)

    def inputs(self, x):
        if self.norm is not None:
            x = self.norm(x)
        return x if self.input_quant is None else self.input_quant(x)

    def weight_quant(self, weight=None):
        return self.frozen_weight()


def _freeze_attention(mha: TernaryMultiheadAttention) -> None:
    """The in-projection (or q/k/v projections) of `mha` frozen in place; out_proj is a
    TernaryLinear that freeze's walk freezes."""
    for proj, weight in (("in_proj_quant", "in_proj_weight"), ("q_proj_quant", "q_proj_weight"),
                         ("k_proj_quant", "k_proj_weight"), ("v_proj_quant", "v_proj_weight")):
        if hasattr(mha, proj) and getattr(mha, weight) is not None:
            frozen = FrozenProjection(getattr(mha, proj), getattr(mha, weight))
            setattr(mha, proj, frozen.to(getattr(mha, weight).device).eval())
            setattr(mha, weight, None)  # the float weight is gone; the projection holds its codes


class FrozenConv(_FrozenWeight, nn.Module):
    def __init__(self, layer: nn.modules.conv._ConvNd):
        super().__init__()
        self.dims = len(layer.kernel_size)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.padding_mode = layer.padding_mode
        self._reversed_padding_repeated_twice = layer._reversed_padding_repeated_twice
        self._freeze_from(layer)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        conv = (nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d)[self.dims - 1]
        w = self.frozen_weight()
        if self.padding_mode != "zeros":
            x = nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def freeze(model: nn.Module) -> nn.Module:
    """An inference copy of a converted model: ANA and alpha-blending weight layers become
    FrozenLinear / FrozenConv (integer codes + eps; 2 bits per weight on grids of at most four
    levels), ANAActivation becomes HardQuantizer; TernaryLinear / BitLinear become
    FrozenTernaryLinear, TernaryMultiheadAttention's in-projection a FrozenProjection, and a
    per-token DynamicScaleANA a HardTokenQuantizer. Its outputs equal the eval-mode outputs of
    `model`; it is in eval mode and exports with torch.export and anacuda.export.

    A model sharded by FSDP2 (``fully_shard``) or tensor parallelism (DTensor parameters) is
    gathered whole first: call freeze on every rank; each gets the whole frozen model, with
    plain tensors and none of the hooks that torch.distributed added."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"anacuda.freeze: model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, (ANAWeight, AlphaBlendWeight, ANAActivation, DynamicScaleANA)) for m in model.modules()):
        raise ValueError("anacuda.freeze: the model has no anacuda layers to freeze (convert it with anacuda.convert "
                         "and train it first)")
    for name, m in model.named_modules():
        if isinstance(m, ANAActivation) and m.eps_mode == LEARNED and m.eps_pending:
            raise ValueError(f"anacuda.freeze: the learned activation scale of {name or 'the model'} was never "
                             "initialised (no batch has gone through it): run a batch, or call init_scale(x), first")
    # torch cannot deep-copy a module that FSDP2 shards: gather it (every rank calls freeze).
    model = (distributed.gathered_copy(model) if distributed.is_sharded(model) else copy.deepcopy(model)).eval()
    for m in list(model.modules()):
        if isinstance(m, TernaryMultiheadAttention):
            _freeze_attention(m)
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, (ANAWeight, AlphaBlendWeight)):
                new = FrozenLinear(child) if isinstance(child, nn.Linear) else FrozenConv(child)
            elif isinstance(child, ANAActivation):
                new = HardQuantizer(child)
            elif isinstance(child, TernaryLinear):
                new = FrozenTernaryLinear(child)
            elif isinstance(child, DynamicScaleANA) and child.rule == "absmax_per_token":
                new = HardTokenQuantizer(child)
            else:
                continue
            setattr(parent, child_name, new.to(next(child.buffers()).device).eval())
    return model
