"""anacuda on PyTorch's distributed tensors (DTensor, the tensors of tensor parallelism and of
FSDP2's sharded parameters): the sharding rule of every anacuda op, and what
anacuda.functional does with a DTensor input.

A DTensor is computed shard by shard, without gathering. The elementwise ops follow the input's
placement; an eps (or any tensor that broadcasts to the input) is sharded along with a
dimension it varies on and replicated along one it broadcasts on; a learned eps's gradient is
sharded with eps or, where eps is shared by the shards, a partial sum that DTensor all-reduces.
A scale defined by a reduction (the rules of SPEC §9) is computed by anacuda.functional with
DTensor's own reductions, which reduce across the shards, and passed to the elementwise op as
a tensor: every rank gets the scale one process would, never a scale of its shard. The ops
that compute a rule's scale themselves refuse a DTensor (called directly; see _refuse). The
random strategy takes its input whole (its noise is drawn over the whole tensor, as one
process draws it): DTensor gathers a sharded one first. Partial inputs are reduced first (the
ops are not linear).

Registered on import of anacuda when torch.distributed is available.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref

import torch

from .quantizer import SCALE_FLOOR, SCALE_RULES, Quantizer, compute_dtype, grid_reach, scale_shape

AVAILABLE = torch.distributed.is_available()
if AVAILABLE:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.experimental import register_sharding


def is_dtensor(x) -> bool:
    return AVAILABLE and isinstance(x, DTensor)


# --- what anacuda.functional does with a DTensor input -----------------------------------------
def rule_scale(x: torch.Tensor, rule: str, reach: float, r_min: float) -> torch.Tensor:
    """eps of a rule of SPEC §9 as the op computes it (``_dynamic_eps``: max(r(|x|), r_min) / reach
    per group in the compute dtype, sums in float64, NaN for a group that holds a NaN or an
    infinity), written in torch reductions so that a DTensor's are reduced across its shards."""
    a = x.detach().abs().to(compute_dtype(x.dtype))
    reduction, group = SCALE_RULES[rule]
    dims = {"token": (-1,), "tensor": tuple(range(x.dim())), "channel": tuple(range(1, x.dim()))}[group]
    keep = group != "tensor"
    if x.numel() == 0:  # an empty group's r is 0
        r = a.new_zeros(scale_shape(x.shape, rule))
    elif reduction == "max":
        # A NaN counts as +inf: a max across ranks need not keep a NaN, it keeps +inf.
        r = _reduced(torch.where(a == a, a, math.inf).amax(dim=dims, keepdim=keep)) if dims else a
    else:
        n = math.prod(x.shape[d] for d in dims)
        r = (_reduced(a.to(torch.float64).sum(dim=dims, keepdim=keep)) / n).to(a.dtype) if dims else a
    # Divided by a tensor: CUDA divides by a Python number as a product with its reciprocal, the
    # op divides (as HardTokenQuantizer does too).
    c = torch.tensor(reach, dtype=r.dtype, device=r.device)
    return torch.where(r < math.inf, r.clamp(min=r_min) / c, math.nan)


def _reduced(t: torch.Tensor) -> torch.Tensor:
    """t with its partial sums or maxima reduced now: DTensor would carry a partial sum through
    the division and the cast, and sum in the input's dtype what one process sums in float64."""
    if is_dtensor(t) and any(p.is_partial() for p in t.placements):
        return t.redistribute(t.device_mesh, [Replicate() if p.is_partial() else p for p in t.placements])
    return t


def at_rule_scale(x: DTensor, rule: str, quantizer: Quantizer, fn, nan_gradient: bool = True):
    """fn(eps) at the scale of a rule of SPEC §9 computed across x's shards (rule_scale), as the
    op computes it: NaN for a group without a finite scale, and there a NaN gradient (ana's) or,
    with ``nan_gradient=False``, fn's (alpha-blending's (1 − α)·grad)."""
    eps = rule_scale(x, rule, grid_reach(quantizer), SCALE_FLOOR)
    finite = eps < math.inf
    y = fn(torch.where(finite, eps, 1.0))
    masked = y * torch.where(finite, 1.0, math.nan).to(y.dtype)  # y itself where finite (y * 1 is exact)
    return masked if nan_gradient else y - (y - masked).detach()


def replicated(x: DTensor, *tensors):
    """Each plain tensor in `tensors` as a DTensor replicated on x's mesh (the tables, the
    hyper-parameters, an eps: the same on every rank); DTensors and the rest as they are."""
    mesh = x.device_mesh
    rep = [Replicate()] * mesh.ndim
    return tuple(DTensor.from_local(t, mesh, rep, run_check=False)
                 if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) else t for t in tensors)


def shared_seed(x: DTensor, seed: torch.Tensor) -> DTensor:
    """The random strategy's seed, rank 0's on every rank of x's mesh: the replicas of a tensor
    draw the same noise even if their generators differ."""
    return distribute_tensor(seed, x.device_mesh, [Replicate()] * x.device_mesh.ndim)


# --- a whole copy of a sharded model (anacuda.freeze) ------------------------------------------
def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 or tensor parallelism shards the model (torch cannot deep-copy it)."""
    if not AVAILABLE:
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules()) or any(
        is_dtensor(t) for t in (*model.parameters(), *model.buffers()))


def fsdp_manages(module: torch.nn.Module, name: str) -> bool:
    """Whether FSDP2's fully_shard manages the parameter `name` of `module` (read from FSDP2's
    module states; False where this torch keeps them elsewhere)."""
    if not AVAILABLE:
        return False
    try:
        from torch.distributed._composable_state import _module_state_mapping
    except ImportError:
        return False
    for state in list(_module_state_mapping.values()):
        state = state() if isinstance(state, weakref.ref) else state
        group = getattr(state, "_fsdp_param_group", None) if type(state).__name__ == "FSDPState" else None
        for p in getattr(group, "fsdp_params", None) or ():
            info = getattr(p, "_module_info", None)
            if info is not None and info.module is module and info.param_name == name:
                return True
    return False


def _from_torch_distributed(hook) -> bool:
    """A hook that FSDP2 or tensor parallelism registered (to shard, gather or redistribute)."""
    fn = getattr(hook, "hook", hook)  # nn.Module wraps some hooks
    fn = fn.func if isinstance(fn, functools.partial) else fn
    owner = getattr(fn, "__self__", None)
    names = (getattr(fn, "__module__", None) or "", type(owner).__module__ if owner is not None else "")
    return any(n.startswith("torch.distributed") for n in names)


def gathered_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of a model sharded by FSDP2 or tensor parallelism: every DTensor parameter and
    buffer gathered whole (a collective: every rank of the mesh calls it, and each gets the whole
    model), the modules of their own classes again (not FSDP's), without the hooks and state that
    torch.distributed added; the rest deep-copied."""
    from torch.distributed.fsdp import FSDPModule

    memo = {}  # deepcopy's, and each parameter and buffer's copy by id: tied ones stay tied

    def whole(t, parameter=False):
        if t is None:
            return None
        if id(t) not in memo:
            w = t.detach().full_tensor() if is_dtensor(t) else t.detach().clone()
            memo[id(t)] = torch.nn.Parameter(w, t.requires_grad) if parameter else w
        return memo[id(t)]

    def module_copy(m):
        cls = type(m)
        if isinstance(m, FSDPModule):  # fully_shard made the class FSDP<cls>(FSDPModule, cls)
            cls = next(b for b in cls.__bases__ if not issubclass(b, FSDPModule))
        new = cls.__new__(cls)
        hooks = [k for k, v in m.__dict__.items() if "_hooks" in k and isinstance(v, dict)]
        dropped = {i for k in hooks for i, h in m.__dict__[k].items() if _from_torch_distributed(h)}
        for key, value in m.__dict__.items():
            if key.startswith("__composable_api") or key in ("_fsdp_use_orig_params", "_is_fsdp_managed_module"):
                continue  # FSDP2's state
            if key == "_parameters":
                value = {k: whole(p, parameter=True) for k, p in value.items()}
            elif key == "_buffers":
                value = {k: whole(b) for k, b in value.items()}
            elif key == "_modules":
                value = {k: None if c is None else module_copy(c) for k, c in value.items()}
            elif key in hooks:  # and the flags kept by hook id (with_kwargs, always_called)
                value = copy.deepcopy(type(value)((i, h) for i, h in value.items() if i not in dropped), memo)
            else:
                value = copy.deepcopy(value, memo)
            new.__dict__[key] = value
        return new

    return module_copy(model)


# --- tensor parallelism of anacuda's layers ------------------------------------------------------
if AVAILABLE:
    from torch import nn
    from torch.distributed.tensor import distribute_module
    from torch.distributed.tensor import parallel as _tp

    class ColwiseParallel(_tp.ColwiseParallel):
        """torch's ColwiseParallel for a Linear with submodules (TernaryLinear, BitLinear: the
        quantisers, the norm): the layer's own weight and bias sharded on dim 0, the submodules'
        parameters and buffers replicated. torch's shards every parameter it finds by name and
        fails on a submodule's ("parameter name can't contain '.'"). For a plain Linear (and
        ANALinear) it is torch's."""

        def _partition_linear_fn(self, name, module, device_mesh):
            if name:  # a submodule: distribute_module replicates its parameters and buffers
                return
            for key, param in module.named_parameters(recurse=False):
                module.register_parameter(key, nn.Parameter(
                    distribute_tensor(param, device_mesh, [Shard(0)], src_data_rank=self.src_data_rank),
                    requires_grad=param.requires_grad))

    class RowwiseParallel(_tp.RowwiseParallel):
        """torch's RowwiseParallel for a Linear with submodules (TernaryLinear, BitLinear): the
        layer's weight sharded on dim 1, its bias and the submodules replicated (torch's looks
        for a weight in every submodule and fails on the quantisers). A layer with a `norm`
        (BitNet's SubLN, which normalises the whole row) takes its input whole: it is gathered
        (DTensor's RMSNorm cannot run on a row split across ranks); the product still runs on
        the weight's shard."""

        def _partition_linear_fn(self, name, module, device_mesh):
            if not name:
                super()._partition_linear_fn(name, module, device_mesh)

        def _apply(self, module, device_mesh):
            if not isinstance(module, nn.Linear) or getattr(module, "norm", None) is None:
                return super()._apply(module, device_mesh)
            self.desired_input_layouts = (Replicate(),)
            prepare_input = functools.partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts)
            prepare_output = functools.partial(self._prepare_output_fn, self.output_layouts, self.use_local_output)
            return distribute_module(module, device_mesh, self._partition_linear_fn, prepare_input, prepare_output)


# --- the sharding rules -------------------------------------------------------------------------
def _is_tensor(a) -> bool:
    return hasattr(a, "placements")  # register_sharding passes a tensor argument as its DTensorSpec


def _broadcast_placement(t, x_ndim: int, dim: int):
    """The placement of t, broadcast to x, on the ranks that hold x's shard along `dim`."""
    k = dim - (x_ndim - t.ndim)
    return Shard(k) if k >= 0 and t.shape[k] != 1 else Replicate()


def _refuse(name):
    """The ops that compute a rule's scale themselves: DTensor caches its decisions (and the
    output's shape) by the tensors' placements and shapes, not by the rule's name, a string, so
    no rule of theirs could be right for every rule. anacuda.functional never calls them on a
    DTensor: it computes the scale across the shards itself."""

    def fn(*args):
        raise NotImplementedError(
            f"anacuda: torch.ops.anacuda.{name} does not take a DTensor; call anacuda.functional.ana or alpha_blend "
            "with the rule as eps (e.g. eps='absmax_per_token'): on a DTensor they reduce the scale across the shards")

    return fn


def _rule(follow, broadcast=(), outputs=("x",), seed_at=None):
    """A sharding function for register_sharding. follow: the positions of the tensors of x's
    shape (x, its gradient, its code), which share x's placement; broadcast: those that
    broadcast to x (eps). outputs, one per result: "x" (x's placement) or "grad k" (the gradient
    of the broadcast argument at position k: its shard, or a partial sum where it is shared).
    seed_at: the position of the random strategy's seed; with a seed (the random strategy,
    training), x is taken whole. (DTensor caches a decision by the tensors' placements and
    shapes, not by the other arguments: the strategies may depend on whether a seed is given,
    a tensor, but not on the strategy's name.)"""

    def fn(*args):
        x = args[follow[0]]
        strategies = [([Replicate()] * len(outputs), [Replicate() if _is_tensor(a) else None for a in args])]
        if seed_at is not None and args[seed_at] is not None:
            return strategies  # the noise drawn over the whole tensor, as one process draws it
        for d in range(x.ndim):
            inputs = [None] * len(args)
            for i, a in enumerate(args):
                if _is_tensor(a):
                    inputs[i] = (Shard(d) if i in follow else
                                 _broadcast_placement(a, x.ndim, d) if i in broadcast else Replicate())
            outs = []
            for o in outputs:
                p = Shard(d) if o == "x" else inputs[int(o.split()[1])]
                outs.append(p if isinstance(p, Shard) else Partial())
            strategies.append((outs, inputs))
        return strategies

    return fn


def _rules():
    """The ops (csrc/anacuda.cpp) and the positions of their arguments."""
    return {
        "ana": _rule((0,), (4,), seed_at=10),
        "_ana_coded": _rule((0,), (4,), ("x", "x"), seed_at=10),
        "_ana_backward": _rule((0, 1), (5,)),
        "_ana_code": _rule((0,), (3,)),
        "_ana_backward_code": _rule((0, 1)),
        "_ana_backward_eps": _rule((0, 1), (5,), ("x", "grad 5"), seed_at=11),
        "alpha_blend": _rule((0,), (4,)),
        "_alpha_blend_backward_eps": _rule((0, 1), (5,), ("grad 5",)),
        "_dynamic_eps": _refuse("_dynamic_eps"),
        "_ana_dynamic": _refuse("_ana_dynamic"),
        "_ana_dynamic_backward": _rule((0, 1), (2,)),
        "_alpha_blend_dynamic": _refuse("_alpha_blend_dynamic"),
    }


def register() -> None:
    for name, fn in _rules().items():
        register_sharding(getattr(torch.ops.anacuda, name).default)(fn)


if AVAILABLE:
    register()
