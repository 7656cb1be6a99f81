"""ANAConfig: one ANA quantiser configuration — quantiser, noise, strategy, μ, σ, eps and
backward noise — validated once, when it is built (torchao's FakeQuantizeConfig is the model).

The layers take it (``ANALinear(8, 4, config=cfg)``; their keyword arguments build one), so does
``convert`` (``weight_config=``, ``activation_config=``), and every STE preset of ``anacuda.ste``
is one (``ste.Estimator`` is an ANAConfig with a name and a source).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from . import scale
from .quantizer import Noise, Param, Quantizer, as_param, check_noise_name, check_strategy


@dataclasses.dataclass(frozen=True, eq=False)
class ANAConfig:
    """How a tensor is quantised with ANA: ``functional.ana(x, quantizer, noise, mu, sigma,
    strategy, eps=eps, backward_noise=backward_noise)``.

    quantizer: the stair (default ternary). noise: uniform, triangular, normal or logistic, with
    location `mu` and scale `sigma` in units of eps. strategy: ``"mode"`` by default, as the
    layers and ``convert`` (the CVPR 2022 setting: the forward is always on the levels);
    ``functional.ana``'s own default is ``"expectation"``. eps: a number or tensor, or for a
    weight a rule of ``anacuda.scale.WEIGHT_RULES`` recomputed from the weight, or for a layer
    ``"learned"`` (a trained parameter initialised as LSQ does, SPEC §8); None leaves it to
    the user of the config (weights: ``scale.DEFAULT_WEIGHT_RULE``; activations and calls: 1).
    backward_noise: None (the gradient is the derivative of the forward noise's smoothed stair,
    the CVPR 2022 algorithm) or a ``(name, mu, sigma)`` tuple / ``Noise`` of its own.

    Frozen: ``cfg.replace(sigma=0.3)`` (or ``cfg.with_sigma(0.3)``) makes a new, validated one.
    Calling it runs the op: ``cfg(x, eps=None, training=True, generator=None)``.
    """

    quantizer: Quantizer = dataclasses.field(default_factory=Quantizer.ternary)
    noise: str = "uniform"
    strategy: str = "mode"
    mu: Param = 0.0
    sigma: Param = 0.5
    eps: Union[str, Param, None] = None
    backward_noise: Optional[Noise] = None

    def __post_init__(self):
        who = f"anacuda.{type(self).__name__}"
        if not isinstance(self.quantizer, Quantizer):
            raise TypeError(f"{who}: quantizer must be an anacuda.Quantizer, got {type(self.quantizer).__name__}")
        check_noise_name(self.noise)
        check_strategy(self.strategy)
        as_param(self.mu, "mu", stored=True)
        as_param(self.sigma, "sigma", "nonnegative", stored=True)
        if isinstance(self.eps, str):
            scale.check_weight_rule(self.eps, learned=True)
        elif self.eps is not None:
            as_param(self.eps, "eps", "positive", scalar=False, stored=True)
        if self.backward_noise is not None:
            back = Noise.of(self.backward_noise)
            as_param(back.mu, "backward mu", stored=True)
            as_param(back.sigma, "backward sigma", "nonnegative", stored=True)
            object.__setattr__(self, "backward_noise", back)

    @classmethod
    def build(cls, config: Optional["ANAConfig"], who: str, **given) -> "ANAConfig":
        """`config`, or one built from the keyword arguments `given` that are not None (a layer's
        or convert's). Both at once is an error: one of them would be silently ignored."""
        given = {k: v for k, v in given.items() if v is not None}
        if config is None:
            return cls(**given)
        if not isinstance(config, ANAConfig):
            raise TypeError(f"{who}: config must be an anacuda.ANAConfig, got {type(config).__name__}")
        if given:
            raise TypeError(f"{who}: pass the quantisation arguments either in config or as keywords, not both; "
                            f"got config and {sorted(given)}")
        return config

    def kwargs(self) -> dict:
        """The keyword arguments of ``functional.ana``: quantizer, noise, mu, sigma, strategy,
        backward_noise, and eps when the config has one."""
        kw = dict(quantizer=self.quantizer, noise=self.noise, mu=self.mu, sigma=self.sigma, strategy=self.strategy,
                  backward_noise=self.backward_noise)
        if self.eps is not None:
            kw["eps"] = self.eps
        return kw

    def __call__(self, x: torch.Tensor, eps: Optional[Param] = None, training: bool = True,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``functional.ana(x, **self.kwargs())`` with `eps` (default: the config's, else 1),
        `training` and `generator`. With ``training=False`` it is the hard stair."""
        from .functional import ana

        if eps is None:
            eps = 1.0 if self.eps is None else self.eps
        # positional, not **self.kwargs(): a dict per call costs a small layer's kernel time
        return ana(x, self.quantizer, self.noise, self.mu, self.sigma, self.strategy, training, eps,
                   self.backward_noise, generator)

    def replace(self, **changes) -> "ANAConfig":
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def with_sigma(self, sigma: Param) -> "ANAConfig":
        """The same configuration with the forward σ replaced (a separate backward noise stays)."""
        return self.replace(sigma=sigma)
