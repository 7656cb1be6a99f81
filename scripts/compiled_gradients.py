"""Eager versus torch.compile gradients of a converted ResNet-18: how far apart, where, and why.

    python3 scripts/compiled_gradients.py [--backward-noise uniform|triangular] [--weight-eps RULE]

torchvision's ResNet-18 (random initialisation, seed 0) converted with the defaults (ternary
weights and activations, uniform σ = 0.5, mode: the clipped STE, whose gradient is 1 on the
half-open box [−1, 1) of u = x / eps and 0 outside), conv1 and fc float, in training mode; one
batch of 2 random 3×32×32 images. The gradients of eager, aot_eager and inductor are compared
parameter by parameter, and the input of every quantised activation is recorded (a forward
pre-hook, traced by Dynamo too) to find the elements whose side of the box edge differs.
`--backward-noise triangular` gives the layers a continuous backward density instead (the
triangle of half-width 0.5: the same support, no jump). One thread; inductor's compilation of
the forward and backward takes a few CPU-minutes.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import anacuda  # noqa: E402
from anacuda.nn import ANAActivation, convert  # noqa: E402


def run(model, x, y, fn, store):
    store.clear()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(fn(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, {k: v.detach() for k, v in store.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backward-noise", choices=["uniform", "triangular"], default="uniform")
    p.add_argument("--weight-eps", default=None, help="a rule of anacuda.scale.WEIGHT_RULES (default: the default)")
    p.add_argument("--batch", type=int, default=2, help="images per batch (32x32)")
    p.add_argument("--float", action="store_true", help="the float ResNet-18, not converted (the baseline)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import torchvision

    torch.manual_seed(0)
    back = None if args.backward_noise == "uniform" else ("triangular", 0.0, 0.5)
    model = torchvision.models.resnet18(num_classes=10).train()
    if not args.float:
        model = convert(model, skip=["conv1", "fc"], backward_noise=back, weight_eps=args.weight_eps).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(10, (args.batch,), generator=g)
    store = {}
    for name, m in model.named_modules():
        if isinstance(m, ANAActivation):
            m.register_forward_pre_hook(lambda mod, inp, name=name: store.__setitem__(name, inp[0]))

    eager = run(model, x, y, model, store)
    aot = run(model, x, y, torch.compile(model, backend="aot_eager"), store)
    ind = run(model, x, y, torch.compile(model, backend="inductor"), store)
    print(f"anacuda {anacuda.__version__}, torch {torch.__version__}; batch {args.batch}, " + (
        "float model" if args.float else f"backward noise {args.backward_noise}, weight eps "
                                         f"{args.weight_eps or anacuda.scale.DEFAULT_WEIGHT_RULE}"))
    same = all(torch.equal(eager[0][n], aot[0][n]) for n in eager[0])
    print(f"aot_eager gradients equal eager's bit for bit: {same}")

    rows = []
    for n, ge in eager[0].items():
        gi = ind[0][n]
        scale = ge.abs().max().item()
        rows.append((((gi - ge).abs().max().item() / scale) if scale else 0.0, n))
    rows.sort(reverse=True)
    print("largest inductor-vs-eager gradient differences (max |diff| / max |eager grad|, per parameter):")
    for rel, n in rows[:6]:
        print(f"  {n:<28} {100 * rel:8.4f} %")
    print(f"  parameters within 1e-5 relative: {sum(r < 1e-5 for r, _ in rows)} of {len(rows)}")

    # the quantised activations' inputs u (activation eps is 1): which side of the box edges ±1
    flips, total, near = 0, 0, {1e-4: 0, 1e-5: 0, 1e-6: 0}
    worst_edge, worst_move, move = 0.0, 0.0, 0.0
    for name, ue in eager[1].items():
        ui = ind[1][name]
        total += ue.numel()
        move = max(move, (ui - ue).abs().max().item())
        edge = torch.minimum((ue - 1).abs(), (ue + 1).abs())
        for d in near:
            near[d] += int((edge < d).sum())
        inside_e, inside_i = (ue >= -1) & (ue < 1), (ui >= -1) & (ui < 1)
        diff = inside_e != inside_i
        if diff.any():
            flips += int(diff.sum())
            worst_edge = max(worst_edge, edge[diff].max().item())
            worst_move = max(worst_move, (ui - ue)[diff].abs().max().item())
            print(f"  {name}: {int(diff.sum())} elements change side; eager u there: "
                  f"{sorted(set(ue[diff].tolist()))[:4]}, inductor u: {sorted(set(ui[diff].tolist()))[:4]}")
    if not total:
        return
    print(f"activation inputs: {total} elements; within 1e-4 / 1e-5 / 1e-6 of a box edge (u = ±1) in eager: "
          f"{near[1e-4]} / {near[1e-5]} / {near[1e-6]}")
    print(f"largest |u_inductor - u_eager| over all activation inputs: {move:.3g}")
    print(f"elements on the other side of the box edge under inductor: {flips} (at most {worst_edge:.3g} from the "
          f"edge, moved by at most {worst_move:.3g})")


if __name__ == "__main__":
    main()
