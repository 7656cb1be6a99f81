"""The shared machinery of the demo and the experiment runner: the digits data, the small CNN,
the quantised variants of it, the training loop and the evaluation.

Everything here takes a ``device`` and keeps the data on it (the whole data set is 1797 8x8
images, so it lives on the device and batches are index gathers, no DataLoader).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from anacuda import ste
from anacuda.nn import AlphaController, NoiseController, convert, freeze
from anacuda.quantizer import Quantizer

#: σ0 of the CVPR 2022 design: nearly all of the noise's mass within ±0.5 (half a step).
SIGMA0 = {"uniform": 0.5, "triangular": 0.5, "normal": 0.25511, "logistic": 0.13648}

#: Modules of :func:`make_cnn` kept in float in every quantised variant.
FLOAT_LAYERS = ("conv1", "fc")


# --- data ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Digits:
    """scikit-learn's 8x8 digits, standardised with the training set's mean and std, on a device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "Digits":
        return Digits(*(t.to(device) for t in dataclasses.astuple(self)))


def load_digits(split_seed: int = 0, test_size: float = 1 / 3, device="cpu") -> Digits:
    """The 1797 images of ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no
    download), split into train and test, stratified by class, with ``split_seed``."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    X, y = _load(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=split_seed, stratify=y)
    xtr = torch.tensor(xtr, dtype=torch.float32).reshape(-1, 1, 8, 8)
    xte = torch.tensor(xte, dtype=torch.float32).reshape(-1, 1, 8, 8)
    mean, std = xtr.mean(), xtr.std()
    return Digits((xtr - mean) / std, torch.tensor(ytr), (xte - mean) / std, torch.tensor(yte)).to(device)


# --- models -------------------------------------------------------------------------------------
def make_cnn(width: int = 16) -> nn.Sequential:
    """conv-BN-ReLU (8x8) → conv-BN-ReLU-pool (4x4) → conv-BN-ReLU-pool (2x2) → linear.

    BatchNorm sits before every activation, so the quantised activations see inputs of unit
    scale whatever the weights' scale."""
    w = width
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, w, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(w)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(2 * w)), ("act2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)), ("bn3", nn.BatchNorm2d(2 * w)),
        ("act3", nn.ReLU()), ("pool3", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(2 * w * 4, 10)),
    ]))


def quantizer_for(bits: int, levels: str = "symmetric") -> Quantizer:
    """1 bit: binary (±1); 2 bits: ternary (−1, 0, 1); b ≥ 3: symmetric signed integers
    −(2^(b−1) − 1) … 2^(b−1) − 1. levels="full": all 2^b signed integers −2^(b−1) … 2^(b−1) − 1
    (LSQ's signed grid; 2 bits: −2, −1, 0, 1)."""
    if levels == "full":
        return Quantizer.uniform(bits, signed=True)
    if levels != "symmetric":
        raise ValueError(f"levels must be 'symmetric' or 'full', got {levels!r}")
    if bits == 1:
        return Quantizer.binary()
    if bits == 2:
        return Quantizer.ternary()
    return Quantizer.uniform(bits, signed=True, balanced=True)


def activation_eps(bits: int) -> float:
    """The activations' quantum: 1 for binary and ternary (after BatchNorm: thresholds at ±½σ
    of the pre-activation); for b ≥ 3 bits the outermost level sits at 2 (two standard deviations)."""
    return 1.0 if bits <= 2 else 2.0 / (2 ** (bits - 1) - 1)


def ste_sigma(bits: int) -> float:
    """The σ of the clipped STE (uniform noise, mode): half a step, i.e. 0.5 on a unit grid and
    1 for binary (levels ±1 are 2 apart; Larq's ste_sign)."""
    return 1.0 if bits == 1 else 0.5


# --- run configuration --------------------------------------------------------------------------
#: Fields added to RunConfig later, with the value that older rows implicitly had.
_LATER_FIELDS = {"alpha_end": 0.8, "activation_scale": "fixed", "levels": "symmetric"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run. Every field goes into the CSV.

    method: ``ana`` (the CVPR 2022 algorithm: NoiseController, backward noise = forward noise),
    ``ana2019`` (forward σ annealed linearly 0.5 → 0 group after group, backward fixed at
    uniform 0.5), ``ste`` (the clipped STE: uniform noise of half a step, mode, never
    annealed), ``alpha_blend`` (alpha-blended weights with AlphaController; activations with
    the clipped STE), ``float`` (no quantisation).
    sigma: ``static`` (σ0 throughout) or ``annealed`` (σ0 → 0 within the window); mu:
    ``static`` (0) or ``dynamic`` (−0.5 → 0 within the window, the paper's dynamic μ).
    window / power / schedule: the NoiseController's (``-`` where nothing is annealed).
    init: ``scratch`` (fresh weights) or ``float`` (a copy of the float baseline of the same seed).
    alpha_end: for alpha_blend, the fraction of the epochs at which α reaches 1 (after it the
    weights get no gradient; BatchNorm and the float layers still train).
    weight_eps: a rule of anacuda.scale or ``learned`` (an nn.Parameter per output channel, LSQ's
    initialisation and gradient scale); activation_scale: ``fixed`` (:func:`activation_eps`) or
    ``learned`` (one parameter per activation, initialised from the first batch as LSQ does).
    levels: ``symmetric`` or ``full`` (:func:`quantizer_for`), for weights and activations.
    """

    method: str = "ana"
    noise: str = "uniform"
    strategy: str = "mode"
    sigma: str = "annealed"
    mu: str = "static"
    window: str = "overlapped"
    power: str = "homogeneous"
    schedule: str = "bws"
    wbits: int = 2
    abits: int = 2
    weight_eps: str = "max_abs_per_channel"
    init: str = "scratch"
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    width: int = 16
    seed: int = 0
    alpha_end: float = 0.8
    activation_scale: str = "fixed"
    levels: str = "symmetric"

    @property
    def learned(self) -> bool:
        """A learned weight or activation scale (LSQ, or a smoothed LSQ when the noise is annealed)."""
        return self.weight_eps == "learned" or self.activation_scale == "learned"

    def key(self) -> str:
        """A short stable id of the configuration (all fields, seed included). A field added
        after the first results were written is left out while it has its original default, so
        that older CSVs keep their keys (and resume)."""
        fields = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def anneals(self) -> bool:
        return self.method == "ana2019" or (self.method == "ana" and (self.sigma == "annealed" or self.mu == "dynamic"))

    @property
    def deploy_mismatch(self) -> bool:
        """Expectation with a σ that never reaches 0 trains a network that is not the deployed
        one (the forward is the smoothed stair, never the stair): the paper excluded it."""
        return self.method == "ana" and self.strategy == "expectation" and self.sigma == "static"

    def label(self) -> str:
        suffix = ""
        if self.levels != "symmetric":
            suffix += f" [levels {-2 ** (self.wbits - 1)}…{2 ** (self.wbits - 1) - 1}]"
        if self.learned:
            which = [name for name, on in (("weights", self.weight_eps == "learned"),
                                           ("activations", self.activation_scale == "learned")) if on]
            suffix += f" [learned eps: {' + '.join(which)}]"
        return self._label() + suffix

    def _label(self) -> str:
        if self.method == "ana":
            parts = [self.noise, self.strategy, f"sigma {self.sigma}"]
            if self.mu == "dynamic":
                parts.append("mu dynamic")
            if self.anneals:
                parts += [self.window, self.power] + ([self.schedule] if self.schedule != "bws" else [])
            return "ANA " + " / ".join(parts)
        if self.method == "alpha_blend":
            return f"alpha_blend W{self.wbits}A{self.abits}" + (
                f" (alpha = 1 at {100 * self.alpha_end:.0f} %)" if self.alpha_end != 0.8 else "")
        if self.method == "ste":
            return f"ste W{self.wbits}A{self.abits}"
        return self.method


# --- building the quantised network ---------------------------------------------------------------
def build_quantised(cfg: RunConfig, float_model: nn.Module):
    """(model, controller) for a run: ``float_model`` converted as ``cfg`` says (the first conv
    and the last linear stay in float), and the NoiseController / AlphaController that anneals
    it (None for a static run)."""
    if cfg.method == "float":
        return float_model, None
    wq, aq = quantizer_for(cfg.wbits, cfg.levels), quantizer_for(cfg.abits, cfg.levels)
    act_eps = "learned" if cfg.activation_scale == "learned" else activation_eps(cfg.abits)
    if cfg.method == "ana":
        sigma0 = SIGMA0[cfg.noise]
        mu0 = -0.5 if cfg.mu == "dynamic" else 0.0
        model = convert(float_model, weight_quantizer=wq, activation_quantizer=aq, noise=cfg.noise,
                        strategy=cfg.strategy, sigma=sigma0, mu=mu0, weight_eps=cfg.weight_eps,
                        activation_eps=act_eps, skip=FLOAT_LAYERS)
        ctrl = None
        if cfg.anneals:
            ctrl = NoiseController(model, cfg.epochs, schedule=cfg.schedule, window=cfg.window, power=cfg.power,
                                   anneal_sigma=cfg.sigma == "annealed", anneal_mu=cfg.mu == "dynamic")
        return model, ctrl
    if cfg.method == "ana2019":
        est = ste.ana2019(wq)
        model = convert(float_model, weight_quantizer=wq, activation_quantizer=aq, noise=est.noise,
                        strategy=est.strategy, sigma=0.5, backward_noise=tuple(est.backward_noise),
                        weight_eps=cfg.weight_eps, activation_eps=act_eps, skip=FLOAT_LAYERS)
        # The 2019 recipe: σ decays linearly from 0.5 to 0, one group after the other (input
        # side first), each over its slice of the training time; μ stays 0.
        from anacuda.nn import auto_groups

        groups = auto_groups(model)
        L = len(groups)
        spec = [{"modules": g, "mi": {"beta": 0.0},
                 "sigma": {"beta": 0.5, "fun": "bws",
                           "kwargs": {"tstart": cfg.epochs * l / L, "tend": cfg.epochs * (l + 1) / L, "alpha": 1.0}}}
                for l, g in enumerate(groups)]  # noqa: E741 (l: the group index, as in the paper)
        return model, NoiseController(model, ctrl_spec=spec)
    if cfg.method == "ste":
        s = ste_sigma(cfg.wbits)
        model = convert(float_model, weights="ana", activations=None, weight_quantizer=wq, noise="uniform",
                        strategy="mode", sigma=s, weight_eps=cfg.weight_eps, skip=FLOAT_LAYERS)
    elif cfg.method == "alpha_blend":
        model = convert(float_model, weights="alpha_blend", activations=None, weight_quantizer=wq,
                        weight_eps=cfg.weight_eps, skip=FLOAT_LAYERS)
    else:
        raise ValueError(f"unknown method {cfg.method!r}")
    if cfg.abits:
        model = convert(model, weights=None, activations="ana", activation_quantizer=aq, noise="uniform",
                        strategy="mode", sigma=ste_sigma(cfg.abits), activation_eps=act_eps,
                        skip=FLOAT_LAYERS, inplace=True)
    ctrl = AlphaController(model, end=cfg.alpha_end * cfg.epochs) if cfg.method == "alpha_blend" else None
    return model, ctrl


def first_sigma(model: nn.Module) -> Optional[float]:
    """σ of the first ANA module (the first layer group), or None."""
    from anacuda.nn import quantised_modules
    from anacuda.nn.activation import NoiseHyperParams

    mods = quantised_modules(model, (NoiseHyperParams,))
    return float(mods[0][1].sigma) if mods else None


def first_alpha(model: nn.Module) -> Optional[float]:
    from anacuda.nn import quantised_modules
    from anacuda.nn.layers import AlphaBlendWeight

    mods = quantised_modules(model, (AlphaBlendWeight,))
    return float(mods[0][1].alpha) if mods else None


# --- training -----------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy in eval mode (the deployed network for a quantised model)."""
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train(was)
    return hits / len(x)


def train(model: nn.Module, data: Digits, *, epochs: int, lr: float, batch_size: int, seed: int,
          controller=None, on_epoch: Optional[Callable[[dict], None]] = None, progress: bool = False,
          desc: str = "train") -> list:
    """Adam with a cosine learning-rate decay to 0 over all steps; cross-entropy loss.

    The controller (NoiseController / AlphaController) is stepped to the fractional epoch
    before every batch, so the annealing is smooth, and to ``epochs`` at the end: its values
    are then the final ones (σ = 0 for an annealed run). ``on_epoch`` gets a dict per epoch
    (epoch, loss, train_acc, test_acc, sigma, alpha, seconds). Returns the list of those dicts.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.x_train)
    nb = math.ceil(n / batch_size)
    total = epochs * nb
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * nb, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=g).to(data.x_train.device)
        tot_loss = torch.zeros((), device=data.x_train.device)
        hits = torch.zeros((), device=data.x_train.device, dtype=torch.long)
        for i in range(nb):
            if controller is not None:
                controller.step(epoch + i / nb)
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.detach() * len(idx)
            hits += (out.argmax(1) == yb).sum()
            if bar is not None:
                bar.update(1)
        if controller is not None:
            controller.step(epoch + 1)
        rec = dict(epoch=epoch + 1, loss=float(tot_loss) / n, train_acc=int(hits) / n,
                   test_acc=accuracy(model, data.x_test, data.y_test), sigma=first_sigma(model),
                   alpha=first_alpha(model), seconds=time.perf_counter() - t0)
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    if bar is not None:
        bar.close()
    return history


def train_float(data: Digits, *, width: int, epochs: int, lr: float, batch_size: int, seed: int, device,
                **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = make_cnn(width).to(device)
    train(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, **kw)
    return model


def run(cfg: RunConfig, data: Digits, float_model: Optional[nn.Module] = None, device="cpu", **kw) -> dict:
    """Trains one configuration and returns the CSV row: the config's fields, the float
    baseline's accuracy (if given), the quantised model's eval-mode and frozen test accuracy
    (equal by construction; both are recorded), the final σ, the wall time and the CPU time of
    this process (which, unlike the wall time, does not grow when other jobs share the cores)."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    if cfg.init == "float":
        if float_model is None:
            raise ValueError("init='float' needs the float baseline")
        start = copy.deepcopy(float_model)
    else:
        start = make_cnn(cfg.width).to(device)
    model, ctrl = build_quantised(cfg, start)
    model.to(device)
    hist = train(model, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                 controller=ctrl, **kw)
    eval_acc = accuracy(model, data.x_test, data.y_test)
    frozen = freeze(model) if cfg.method != "float" else model
    frozen_acc = accuracy(frozen, data.x_test, data.y_test)
    row = dataclasses.asdict(cfg)
    row.update(key=cfg.key(), label=cfg.label(), deploy_mismatch=cfg.deploy_mismatch,
               float_acc=None if float_model is None else accuracy(float_model, data.x_test, data.y_test),
               eval_acc=eval_acc, quant_acc=frozen_acc, train_acc=hist[-1]["train_acc"] if hist else None,
               final_loss=hist[-1]["loss"] if hist else None, final_sigma=first_sigma(model),
               seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
    return row
