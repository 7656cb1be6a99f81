"""Which weight scale should `convert` and the ANA layers use by default? A measurement.

    python3 scripts/scale_study.py [--out docs/scales.md] [--results results.json] [--quick]

`--results` keeps every result in a JSON file and reuses what it holds (a killed run resumes).
docs/scales.json holds the run of docs/scales.md: `--results docs/scales.json` re-renders that
report without training; a fresh measurement leaves it out.

Compares the rules of anacuda.scale.WEIGHT_RULES (max_abs and absmean per tensor and per output
channel, TWN's threshold, LSQ's initial step) with ternary weights and activations:

1. zero weights at conversion: the fraction of weights that the ternary stair maps to 0, over
   every converted weight layer, for torchvision's ResNet-18 and MobileNetV2 at their random
   initialisation (no pretrained weights can be downloaded here) and for the two trained float
   networks below;
2. accuracy: a float network is trained on scikit-learn's 8x8 digits, converted with each rule
   (the first and last layer stay float, as in the demo), and trained with ANA for the same
   budget (NoiseController, sigma annealed to 0); the test accuracy of the result (eval mode =
   the frozen network) for 3 seeds, on the demo's CNN and on a ResNet-18 adapted to 8x8 inputs.

The training recipe is the demo's (the experiments' core module: Adam, cosine learning rate, ANA
at a third of the float learning rate). Writes a markdown report (docs/scales.md). One thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import anacuda  # noqa: E402
from anacuda import scale  # noqa: E402
from references.experiments import core as C  # noqa: E402
from anacuda.nn import NoiseController, convert  # noqa: E402
from anacuda.nn.layers import ANAWeight  # noqa: E402

RULES = list(scale.WEIGHT_RULES)


def zero_fraction(model: nn.Module) -> float:
    """Share of the converted weights that the (eval-mode) stair maps to the level 0."""
    zeros = total = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ANAWeight):
                q = m.eval().quantized_weight()
                zeros += int((q == 0).sum())
                total += q.numel()
    return zeros / total


def resnet18_digits() -> nn.Module:
    """torchvision's ResNet-18 for 1x8x8 inputs: a 3x3 stride-1 first convolution and no
    max-pooling (the CIFAR adaptation), so the four stages see 8x8, 4x4, 2x2 and 1x1."""
    import torchvision

    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} thread used; torch {torch.__version__}, "
            f"anacuda {anacuda.__version__} ({anacuda.build_info()['cpu_kernels']} CPU kernels)")


def at_init(make, skip):
    torch.manual_seed(0)
    model = make()
    return {rule: zero_fraction(convert(model, weight_eps=rule, skip=skip)) for rule in RULES}


class Cache:
    """Results so far, one JSON file (`--results`): a killed run resumes where it stopped."""

    def __init__(self, path):
        self.path, self.data = path, {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.data = json.load(f)

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value
        if self.path:
            with open(self.path + ".tmp", "w") as f:
                json.dump(self.data, f)
            os.replace(self.path + ".tmp", self.path)


def study(make, name, data, seeds, float_epochs, ana_epochs, lr, batch_size, log, cache, wq=None):
    """Per seed: a float network, then each rule's conversion (weights on `wq`, default ternary)
    and ANA training."""
    rows = {rule: dict(zeros=[], conv_acc=[], acc=[]) for rule in RULES}
    float_accs, secs = [], 0.0
    for seed in seeds:
        t0 = time.process_time()
        float_model = None
        for rule in [None] + RULES:
            key = f"{name}|{float_epochs}+{ana_epochs} epochs|seed {seed}|{rule or 'float'}"
            got = cache.get(key)
            if got is None:
                if float_model is None:
                    torch.manual_seed(seed)
                    float_model = make()
                    C.train(float_model, data, epochs=float_epochs, lr=lr, batch_size=batch_size, seed=seed)
                if rule is None:
                    got = dict(acc=C.accuracy(float_model, data.x_test, data.y_test))
                else:
                    torch.manual_seed(seed)
                    model = convert(copy.deepcopy(float_model), weight_eps=rule, weight_quantizer=wq,
                                    skip=C.FLOAT_LAYERS)
                    got = dict(zeros=zero_fraction(model), conv_acc=C.accuracy(model, data.x_test, data.y_test))
                    model.train()
                    ctl = NoiseController(model, ana_epochs)
                    C.train(model, data, epochs=ana_epochs, lr=lr / 3, batch_size=batch_size, seed=seed,
                            controller=ctl)
                    got["acc"] = C.accuracy(model, data.x_test, data.y_test)
                    log(f"{name} seed {seed} {rule:<20} zeros {100 * got['zeros']:5.1f}%  at conversion "
                        f"{100 * got['conv_acc']:5.1f}%  after ANA {100 * got['acc']:5.1f}%")
                got["cpu_s"] = time.process_time() - t0
                t0 = time.process_time()
                cache.put(key, got)
            secs += got["cpu_s"]
            if rule is None:
                float_accs.append(got["acc"])
            else:
                for k in ("zeros", "conv_acc", "acc"):
                    rows[rule][k].append(got[k])
    return rows, float_accs, secs


def pct(xs):
    m = 100 * statistics.mean(xs)
    if len(xs) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {100 * statistics.stdev(xs):.1f}"


def table(rows, float_accs) -> str:
    lines = ["| weight eps | zero weights at conversion | accuracy at conversion | accuracy after ANA |",
             "|---|---|---|---|"]
    for rule in RULES:
        r = rows[rule]
        lines.append(f"| `{rule}` | {pct(r['zeros'])} % | {pct(r['conv_acc'])} % | {pct(r['acc'])} % |")
    lines.append(f"| (float network) | | {pct(float_accs)} % | |")
    return "\n".join(lines)


def for_every_quantiser(rule: str) -> bool:
    """Whether the rule gives a scale for any grid (binary's only threshold is 0, for one)."""
    for q in (anacuda.Quantizer.binary(), anacuda.Quantizer.uniform(3, signed=False), anacuda.Quantizer.ternary()):
        try:
            scale.weight_scale(torch.ones(2, 2), q, rule)
        except ValueError:
            return False
    return True


def summary(studies) -> str:
    """Mean accuracy after ANA per study and over them; the best rule overall among the rules that
    every quantiser can take, and on the ternary studies alone."""
    names = list(studies)
    lines = ["| weight eps | " + " | ".join(names) + " | mean | defined for every quantiser |",
             "|---|" + "---|" * (len(names) + 2)]
    means = {}
    for rule in RULES:
        per = [statistics.mean(studies[n][rule]["acc"]) for n in names]
        means[rule] = statistics.mean(per)
        lines.append(f"| `{rule}` | " + " | ".join(f"{100 * a:.1f} %" for a in per) +
                     f" | {100 * means[rule]:.2f} % | {'yes' if for_every_quantiser(rule) else 'no'} |")
    best = max((r for r in RULES if for_every_quantiser(r)), key=means.get)
    ternary = [n for n in names if "4-bit" not in n]
    best_t = max(RULES, key=lambda r: statistics.mean(statistics.mean(studies[n][r]["acc"]) for n in ternary))
    undefined = [f"`{r}`" for r in RULES if not for_every_quantiser(r)]
    return "\n".join(lines) + f"""

Best mean over the four studies among the rules that every quantiser can take: **`{best}`**.
On the ternary studies alone the best mean is `{best_t}`. {', '.join(undefined) or 'No rule'}
cannot serve as a default for every grid (TWN places the smallest positive threshold, and
binary's only threshold is 0). The default of `convert` and the layers,
`anacuda.scale.DEFAULT_WEIGHT_RULE`, is `{scale.DEFAULT_WEIGHT_RULE}`."""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the markdown report here (default: stdout)")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch each (a smoke test of the script)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--results", help="keep each result in this JSON file and reuse it (resume a killed run)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.quick else list(range(args.seeds))
    cnn = dict(width=16, float_epochs=1 if args.quick else 10, ana_epochs=1 if args.quick else 10)
    res = dict(float_epochs=1 if args.quick else 3, ana_epochs=1 if args.quick else 4)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    cache = Cache(args.results)

    import torchvision

    init = {"ResNet-18": at_init(lambda: torchvision.models.resnet18(num_classes=10), ["conv1", "fc"]),
            "MobileNetV2": at_init(lambda: torchvision.models.mobilenet_v2(num_classes=10),
                                   ["features.0.0", "classifier.1"])}
    data = C.load_digits(split_seed=0)
    cnn_rows, cnn_float, cnn_s = study(lambda: C.make_cnn(cnn["width"]), "cnn", data, seeds, cnn["float_epochs"],
                                       cnn["ana_epochs"], 3e-3, 64, log, cache)
    res_rows, res_float, res_s = study(resnet18_digits, "resnet18", data, seeds, res["float_epochs"],
                                       res["ana_epochs"], 1e-3, 64, log, cache)
    # wider grids: 4-bit weights (levels -7 ... 7), ternary activations; fewer seeds for the ResNet
    q4 = anacuda.Quantizer.uniform(4, signed=True, balanced=True)
    cnn4_rows, cnn4_float, cnn4_s = study(lambda: C.make_cnn(cnn["width"]), "cnn 4-bit", data, seeds,
                                          cnn["float_epochs"], cnn["ana_epochs"], 3e-3, 64, log, cache, wq=q4)
    res4_rows, res4_float, res4_s = study(resnet18_digits, "resnet18 4-bit", data, seeds[:1], res["float_epochs"],
                                          res["ana_epochs"], 1e-3, 64, log, cache, wq=q4)

    init_lines = ["| weight eps | " + " | ".join(init) + " |", "|---|" + "---|" * len(init)]
    for rule in RULES:
        init_lines.append(f"| `{rule}` | " + " | ".join(f"{100 * init[n][rule]:.1f} %" for n in init) + " |")
    report = f"""# Choosing the default weight scale

Generated by `python3 scripts/scale_study.py{' --quick' if args.quick else ''}` on {machine()}.
CPU time of the training: {(cnn_s + res_s + cnn4_s + res4_s) / 60:.1f} minutes (digits CNN {cnn_s / 60:.1f},
ResNet-18 {res_s / 60:.1f}; with 4-bit weights {cnn4_s / 60:.1f} and {res4_s / 60:.1f}).

Ternary weights and activations unless stated, uniform noise σ = 0.5, strategy mode (the defaults
of `convert`); the first and the last layer stay float. The default rule is chosen at the end.

## Zero weights at conversion, random initialisation

torchvision's models as constructed (`num_classes=10`, torch.manual_seed(0)); no pretrained weights
can be downloaded on this machine.

{chr(10).join(init_lines)}

## Digits, the demo's CNN (width {cnn['width']})

A float CNN (conv-BN-ReLU ×3, the demo's, `{os.path.relpath(C.__file__, ROOT)}`) trained
{cnn['float_epochs']} epochs (Adam, lr 3e-3, cosine), converted with each rule, then trained with ANA
{cnn['ana_epochs']} epochs (lr 1e-3, σ annealed 0.5 → 0 by a NoiseController). Test accuracy on the
599 held-out digits; mean ± standard deviation over seeds {seeds}.

{table(cnn_rows, cnn_float)}

## Digits, ResNet-18

torchvision's ResNet-18 with a 3×3 stride-1 first convolution on one channel and no max-pooling
(the CIFAR adaptation; the stages see 8×8 … 1×1), trained {res['float_epochs']} epochs in float
(Adam, lr 1e-3, cosine), converted (conv1 and fc float), then {res['ana_epochs']} epochs of ANA
(lr 3.3e-4). Same split, seeds {seeds}.

{table(res_rows, res_float)}

## Wider grids: 4-bit weights

The same two studies with the weights on the balanced signed 4-bit grid (levels −7 … 7,
`Quantizer.uniform(4, signed=True, balanced=True)`), activations still ternary; the CNN over seeds
{seeds}, the ResNet-18 over seed {seeds[:1]} only (CPU time). "Zero weights" counts the level 0.

Digits CNN:

{table(cnn4_rows, cnn4_float)}

ResNet-18:

{table(res4_rows, res4_float)}
"""
    report += f"""
## Summary: accuracy after ANA

{summary({"CNN": cnn_rows, "ResNet-18": res_rows, "CNN 4-bit": cnn4_rows, "ResNet-18 4-bit": res4_rows})}

The differences between the mean-based rules are within about one standard deviation of the
seeds; the max-abs rules are far behind wherever they zero most weights (ternary ResNet-18: 93 %
zeros per channel, 99 % per tensor).
"""
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    else:
        print(report)
    return dict(cnn=cnn_rows, resnet=res_rows, cnn4=cnn4_rows, resnet4=res4_rows, init=init)


if __name__ == "__main__":
    main()
