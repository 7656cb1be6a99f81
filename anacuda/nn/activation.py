"""ANAActivation: a drop-in activation (for ReLU, ReLU6, Hardtanh) that quantises with ANA."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from .. import distributed
from .. import functional as F
from ..config import ANAConfig
from ..quantizer import Param, Quantizer, as_param
from ..scale import LEARNED
from .learned_scale import effective_eps, floored, lsq_init, replicas_mean, several_processes


def _buffer(value: Param) -> torch.Tensor:
    """A hyper-parameter (validated by ANAConfig) as a float32 buffer value."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32).reshape(()).clone()
    return torch.tensor(float(value), dtype=torch.float32)


def _host_value(value) -> Optional[float]:
    """A number or one-element host tensor as a float; None for a device tensor (reading it would
    synchronise) or anything else."""
    if isinstance(value, torch.Tensor):
        return float(value) if value.device.type == "cpu" and value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


class NoiseHyperParams(nn.Module):
    """The ANA configuration of a layer: quantiser, noise, strategy, and μ, σ (and a backward
    noise's μ_b, σ_b) kept as buffers so that state_dict, .to() and DDP carry them and a
    NoiseController can anneal them without recompilation.

    It also remembers, on the host, whether σ and the backward σ are both 0 as far as it was told
    (the numbers given at construction, a state dict loaded from the host, and what a
    NoiseController writes): the gradient through the layer is then exactly 0, and a training
    forward warns once (see `_warn_if_no_gradient`). Device tensors are never read for this.
    """

    _no_gradient = False  # σ = σ_b = 0 as far as the host knows
    _warned_no_gradient = False
    _controller_name: Optional[str] = None  # the layer's name in the model, set by a NoiseController

    def _setup_noise(self, config: ANAConfig):
        self.quantizer = config.quantizer
        self.noise = config.noise
        self.strategy = config.strategy
        self.register_buffer("mu", _buffer(config.mu))
        self.register_buffer("sigma", _buffer(config.sigma))
        if config.backward_noise is None:
            self.backward_noise_name = None
        else:
            b = config.backward_noise
            self.backward_noise_name = b.name
            self.register_buffer("mu_b", _buffer(b.mu))
            self.register_buffer("sigma_b", _buffer(b.sigma))
        self._note_sigma(_host_value(config.sigma))

    def _backward_noise(self):
        if self.backward_noise_name in (None, "identity"):  # identity: no mu or sigma (SPEC §5)
            return self.backward_noise_name
        return (self.backward_noise_name, self.mu_b, self.sigma_b)

    def _note_sigma(self, sigma: Optional[float], name: Optional[str] = None) -> None:
        """Record σ as the host knows it (None: unknown) and whether the backward σ is 0 too."""
        if name is not None:
            self._controller_name = name
        if self.backward_noise_name is None:
            sigma_b = sigma
        else:
            sigma_b = _host_value(self.sigma_b)
        self._no_gradient = sigma == 0 and sigma_b == 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._note_sigma(_host_value(state_dict.get(prefix + "sigma")))

    def _warn_if_no_gradient(self, upstream_needs_grad: bool, what: str) -> None:
        """Warns once when this layer trains with σ = σ_b = 0 while something before it needs a
        gradient (`what` says what gets none). Python attributes only: no synchronisation, and
        nothing under torch.compile (reading them there would add guards and recompilations)."""
        if torch.compiler.is_compiling() or not self._no_gradient or self._warned_no_gradient:
            return
        if not (self.training and upstream_needs_grad and torch.is_grad_enabled()):
            return
        self._warned_no_gradient = True
        name = f"{self._controller_name!r} ({type(self).__name__})" if self._controller_name else type(self).__name__
        warnings.warn(
            f"anacuda: layer {name} trains with sigma = 0 and a backward noise of sigma 0 (without backward_noise "
            f"the backward noise is the forward one): the gradient through its quantiser is exactly 0, so {what}. "
            "Give the layer a separate backward noise, e.g. "
            "backward_noise=(\"uniform\", 0, 0.5) (a layer argument, convert(..., backward_noise=...) or "
            "ANAConfig), or stop training once sigma reaches 0. (Warned once per layer.)", stacklevel=2)

    def _noise_repr(self) -> str:
        s = (f"quantizer={self.quantizer}, noise={self.noise}, strategy={self.strategy}, "
             f"mu={self.mu.item():.4g}, sigma={self.sigma.item():.4g}")
        if self.backward_noise_name is not None:
            s += f", backward_noise=({self.backward_noise_name}, {self.mu_b.item():.4g}, {self.sigma_b.item():.4g})"
        return s


class ANAActivation(NoiseHyperParams):
    """y = eps · g(x / eps) with ANA (SPEC §4): smoothed while training with σ > 0, the hard stair
    Q(x / eps − μ) in eval mode. Defaults (ANAConfig's) follow the CVPR 2022 CIFAR-10 setting:
    ternary levels, uniform noise σ = 0.5, strategy mode (the clipped STE), eps 1.

    The arguments are an ANAConfig's (`eps` a number or a tensor): pass them as arguments, or pass
    ``config=`` (an ANAConfig or an ``anacuda.ste`` preset) instead; not both.
    """

    def __init__(self, quantizer: Quantizer = None, noise: str = None, strategy: str = None, mu: Param = None,
                 sigma: Param = None, eps: Param = None, backward_noise=None, *, config: ANAConfig = None):
        super().__init__()
        config = ANAConfig.build(config, "anacuda.nn.ANAActivation", quantizer=quantizer, noise=noise,
                                 strategy=strategy, mu=mu, sigma=sigma, eps=eps, backward_noise=backward_noise)
        self._setup_noise(config)
        self.eps_mode = None
        if isinstance(config.eps, str):
            # A learned eps (SPEC §8, anacuda/nn/learned_scale.py): one value, LSQ's initialisation
            # from the first batch (in eval too, in one process), averaged over the ranks of a
            # distributed run (or init_scale(x); do it before torch.compile, whose guard on the
            # pending flag would otherwise recompile once), LSQ's gradient scale.
            if config.eps != LEARNED:
                raise TypeError(f"anacuda: eps must be a number or a tensor, got str {config.eps!r} (the one rule of "
                                f"an activation's eps is {LEARNED!r})")
            self.eps_mode, self.eps_grad_scale, self.eps_pending = LEARNED, True, True
            # shape (1,), not (): FSDP2's fully_shard takes no 0-d parameter
            self.eps = nn.Parameter(torch.ones(1, dtype=torch.float32))
            return
        eps_t = as_param(1.0 if config.eps is None else config.eps, "eps", "positive", scalar=False, stored=True)
        self.register_buffer("eps", eps_t.detach().to(torch.float32).clone())

    @torch.no_grad()
    def init_scale(self, x: torch.Tensor):
        """A learned eps: LSQ's initialisation 2 mean|x| / sqrt(q_K) from the batch x; under
        torch.distributed, the mean over the ranks (a collective: call it on every rank)."""
        if self.eps_mode != LEARNED:
            raise ValueError("anacuda.nn: init_scale needs activation eps 'learned'")
        self.eps.copy_(replicas_mean(lsq_init(x, self.quantizer, per_channel=False)))
        self.eps_pending = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.eps_mode == LEARNED and prefix + "eps" in state_dict:
            self.eps_pending = False  # a loaded scale is not re-initialised by the next batch
            if state_dict[prefix + "eps"].dim() == 0:  # saved when the scale was 0-d
                state_dict[prefix + "eps"] = state_dict[prefix + "eps"].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def eval_eps(self) -> torch.Tensor:
        """The eps of the eval forward, detached (for freeze): a learned one floored."""
        if self.eps_mode != LEARNED:
            return self.eps.detach()
        return floored(self.eps.detach())

    def activation_eps(self, x: torch.Tensor) -> torch.Tensor:
        """The eps this forward uses (for a learned one: floored, with LSQ's gradient scale)."""
        if self.eps_mode != LEARNED:
            return self.eps
        if self.eps_pending:  # eval too: never eps = 1 by default
            if not self.training and several_processes():
                # a collective that an evaluation on some of the ranks only would leave waiting
                raise RuntimeError("anacuda.ANAActivation: a learned activation scale is initialised from its first "
                                   "batch, averaged over the ranks (a collective): run a training batch on every "
                                   "rank, or call init_scale(x) on every rank, before evaluating")
            if not torch.compiler.is_compiling() and distributed.fsdp_manages(self, "eps"):
                # FSDP2 gathers the parameters for a forward and drops what the forward writes to them
                raise RuntimeError("anacuda.ANAActivation: a learned activation scale is initialised from its "
                                   "first batch, which FSDP2 would drop: run one batch through the model (or call "
                                   "init_scale(x) on each ANAActivation) before fully_shard")
            self.init_scale(x)
        # N = every element of the batch, as the common LSQ code has it (the paper's N_F counts one
        # example's features: a gradient larger by sqrt(batch size)).
        return effective_eps(self.eps, x.numel(), self.quantizer, self.eps_grad_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._warn_if_no_gradient(x.requires_grad, "no parameter before it gets a gradient through it")
        return F.ana(x, self.quantizer, self.noise, self.mu, self.sigma, self.strategy, self.training,
                     self.activation_eps(x), self._backward_noise())

    def extra_repr(self) -> str:
        if self.eps_mode == LEARNED:
            eps = LEARNED
        else:
            eps = f"{self.eps.item():.4g}" if self.eps.numel() == 1 else f"tensor{tuple(self.eps.shape)}"
        return f"{self._noise_repr()}, eps={eps}"
