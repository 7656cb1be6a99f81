"""ANAConfig: one validated configuration used by the layers, convert and the STE presets."""

import dataclasses
import inspect

import pytest
import torch
from torch import nn

import anacuda
from anacuda import ANAConfig, Noise, Quantizer, ste
from anacuda import functional as F
from anacuda.nn import ANAActivation, ANAConv2d, ANALinear, convert


def test_defaults_are_the_layers_and_fana_differs_only_in_strategy():
    cfg = ANAConfig()
    assert cfg.quantizer == Quantizer.ternary() and cfg.noise == "uniform" and cfg.strategy == "mode"
    assert cfg.mu == 0.0 and cfg.sigma == 0.5 and cfg.eps is None and cfg.backward_noise is None
    # functional.ana's own default strategy is expectation (stated in its docstring and the README)
    fana = inspect.signature(F.ana).parameters
    assert fana["strategy"].default == "expectation" and fana["noise"].default == cfg.noise
    assert fana["sigma"].default == cfg.sigma and fana["mu"].default == cfg.mu
    assert anacuda.ANAConfig is ANAConfig and "ANAConfig" in anacuda.__all__


def test_validated_once_and_frozen():
    cfg = ANAConfig(Quantizer.uniform(3), "normal", "expectation", 0.1, 0.3, "absmean", ("uniform", 0.0, 0.5))
    assert cfg.backward_noise == Noise("uniform", 0.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sigma = 0.1
    assert cfg.with_sigma(0.2).sigma == 0.2 and cfg.sigma == 0.3
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        cfg.replace(sigma=-1.0)
    for bad, exc, match in [(dict(quantizer="ternary"), TypeError, "quantizer must be an anacuda.Quantizer, got str"),
                            (dict(noise="gauss"), ValueError, "unknown noise 'gauss'"),
                            (dict(strategy="sample"), ValueError, "unknown strategy 'sample'"),
                            (dict(mu=float("nan")), ValueError, "mu must be finite"),
                            (dict(sigma=torch.tensor(-1.0)), ValueError, "sigma must be >= 0"),
                            (dict(eps="max"), ValueError, "weight eps must be a number, a tensor or one of"),
                            (dict(eps=0.0), ValueError, "eps must be > 0"),
                            (dict(backward_noise=("uniform", 0.0, -1.0)), ValueError, "backward sigma must be >= 0")]:
        with pytest.raises(exc, match=match):
            ANAConfig(**bad)


def test_call_and_kwargs_are_functional_ana():
    x = torch.linspace(-2, 2, 41)
    cfg = ANAConfig(noise="logistic", strategy="expectation", sigma=0.2, eps=0.5)
    assert torch.equal(cfg(x), F.ana(x, **cfg.kwargs()))
    assert torch.equal(cfg(x), F.ana(x, Quantizer.ternary(), "logistic", 0.0, 0.2, "expectation", eps=0.5))
    assert torch.equal(cfg(x, eps=2.0), F.ana(x, **{**cfg.kwargs(), "eps": 2.0}))
    assert torch.equal(cfg(x, training=False), Quantizer.ternary()(x / 0.5) * 0.5)


def test_layers_take_a_config_or_its_keywords():
    cfg = ANAConfig(Quantizer.uniform(3), "normal", "expectation", 0.1, 0.3, "absmean_per_channel",
                    ("uniform", 0.0, 0.5))
    torch.manual_seed(0)
    a = ANALinear(8, 4, config=cfg)
    torch.manual_seed(0)
    b = ANALinear(8, 4, quantizer=Quantizer.uniform(3), noise="normal", strategy="expectation", mu=0.1, sigma=0.3,
                  eps="absmean_per_channel", backward_noise=("uniform", 0.0, 0.5))
    assert repr(a) == repr(b)
    x = torch.randn(3, 8)
    assert torch.equal(a(x), b(x))
    assert a.eps_mode == "absmean_per_channel" and a.backward_noise_name == "uniform"
    conv = ANAConv2d(2, 3, 3, config=cfg.replace(eps=0.05))
    assert conv.eps.item() == pytest.approx(0.05)
    act = ANAActivation(config=cfg.replace(eps=2.0))
    assert act.eps.item() == 2.0 and act.sigma.item() == pytest.approx(0.3) and act.noise == "normal"
    with pytest.raises(TypeError, match=r"either in config or as keywords, not both; got config and \['sigma'\]"):
        ANALinear(8, 4, sigma=0.3, config=cfg)
    with pytest.raises(TypeError, match="config must be an anacuda.ANAConfig, got dict"):
        ANAActivation(config={"sigma": 0.3})
    with pytest.raises(TypeError, match="eps must be a number or a tensor, got str"):
        ANAActivation(config=cfg)  # a weight-scale rule is for weights


def test_an_ste_preset_is_a_config():
    est = ste.ana2019(sigma=0.25)
    assert isinstance(est, ANAConfig)
    act = ANAActivation(config=est)
    assert act.strategy == "expectation" and act.sigma.item() == 0.25
    assert act.backward_noise_name == "uniform" and act.sigma_b.item() == 0.5
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    y = act(x)
    x2 = x.detach().clone().requires_grad_()
    y2 = est(x2)
    assert torch.equal(y, y2)
    y.sum().backward()
    y2.sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_convert_takes_weight_and_activation_configs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    w = ANAConfig(Quantizer.uniform(4), "normal", "expectation", sigma=0.2, eps="absmean")
    a = ste.clipped_ste(Quantizer.uniform(2, signed=False)).replace(eps=0.25)
    c = convert(model, weight_config=w, activation_config=a)
    assert c[0].quantizer == Quantizer.uniform(4) and c[0].noise == "normal" and c[0].eps_mode == "absmean"
    assert c[1].quantizer == Quantizer.uniform(2, signed=False) and c[1].eps.item() == 0.25 and c[1].strategy == "mode"
    # one side by config, the other by keywords
    c = convert(model, weight_config=w, activation_quantizer=Quantizer.binary(), activation_eps=0.5)
    assert c[1].quantizer == Quantizer.binary() and c[1].eps.item() == 0.5 and c[2].noise == "normal"
    with pytest.raises(TypeError, match=r"backward_noise in the configs, not as keywords; got \['noise'\]"):
        convert(model, weight_config=w, noise="normal")
    with pytest.raises(TypeError, match=r"got config and \['quantizer'\]"):
        convert(model, weight_config=w, weight_quantizer=Quantizer.binary())
    with pytest.raises(TypeError, match="weight_config is for weights='ana'"):
        convert(model, weights="alpha_blend", weight_config=w)
