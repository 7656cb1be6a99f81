"""`make demo`: train a ternary CNN on scikit-learn's 8x8 digits with Additive Noise Annealing.

python3 -m examples.demo [--noise uniform] [--strategy mode] [--schedule bws] [--window overlapped]
                         [--bits 2] [--epochs 15] [--device cpu|cuda] [--seed 0] [--quick]

1. Trains a small float CNN (conv-BN-ReLU x 3, max-pooling, a linear classifier) on the
   digits (1797 real images shipped with scikit-learn; a fixed stratified split, 2/3 train).
2. Converts a copy with ``anacuda.convert``: ternary weights in the middle convolutions and
   ternary activations everywhere; the first convolution and the last linear layer stay in
   float (as is usual; their inputs/outputs are the raw pixels and the logits).
3. Fine-tunes it with ANA: a NoiseController anneals σ of every layer group to 0 by the end
   of training (the CVPR 2022 algorithm: the gradient is the derivative of the smoothed stair).
4. Freezes it (integer weight codes, hard quantisers: the deployed network) and reports the
   float model's test accuracy next to the frozen ternary model's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

import anacuda
from anacuda import NOISES, STRATEGIES
from anacuda.nn.controller import POWERS, SCHEDULES, WINDOWS
from references.experiments import core as C


def parse_bits(text: str):
    """'2' -> (2, 2); '2/4' or '2,4' -> (weights 2, activations 4)."""
    parts = text.replace(",", "/").split("/")
    try:
        bits = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bits takes N or W/A with integers, got {text!r}") from None
    if len(bits) == 1:
        bits = bits * 2
    if len(bits) != 2 or not all(1 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"--bits takes N or W/A with 1 <= N <= 8, got {text!r}")
    return bits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m examples.demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--noise", choices=NOISES, default="uniform", help="the ANA noise law")
    p.add_argument("--strategy", choices=STRATEGIES, default="mode", help="the ANA forward strategy")
    p.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "constant"], default="bws",
                   help="shape of the σ decay")
    p.add_argument("--window", choices=WINDOWS, default="overlapped", help="decay window of each layer group")
    p.add_argument("--power", choices=POWERS, default="homogeneous", help="decay exponents of the groups")
    p.add_argument("--bits", type=parse_bits, default=(2, 2), metavar="N|W/A",
                   help="bits of weights/activations (1 = binary, 2 = ternary, b >= 3 = signed integers)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the float and of the quantised training")
    p.add_argument("--width", type=int, default=32, help="channels of the first convolution")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (float training; ANA uses lr/3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-eps", choices=["max_abs_per_channel", "max_abs"], default="max_abs_per_channel",
                   help="how the weights' quantum is chosen")
    p.add_argument("--device", default="cuda" if anacuda.cuda_available() else "cpu",
                   help="cpu or cuda (default cuda when the CUDA kernels and a GPU are available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch order")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (0: torch's default). 1 by default: these tiny convolutions gain little "
                        "from more, a machine shared with other jobs loses a lot (161 s instead of 18 s measured "
                        "under load with 2 threads), and results then do not depend on the core count")
    p.add_argument("--quick", action="store_true", help="a few seconds: 2 epochs, width 8 (for tests)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def dev_type(device: str) -> str:
    return torch.device(device).type


def _line(prefix: str, rec: dict) -> str:
    s = (f"{prefix} epoch {rec['epoch']:>2}  loss {rec['loss']:.4f}  train {100 * rec['train_acc']:5.1f}%  "
         f"test {100 * rec['test_acc']:5.1f}%")
    if rec.get("sigma") is not None:
        s += f"  sigma(group 1) {rec['sigma']:.4f}"
    return s + f"  ({rec['seconds']:.1f} s)"


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.epochs, args.width = min(args.epochs, 2), min(args.width, 8)
    if args.device.startswith("cuda") and not anacuda.cuda_available():
        raise SystemExit("examples.demo: --device cuda needs the CUDA kernels and a GPU "
                         f"(build info: {anacuda.build_info()})")
    if args.threads and dev_type(args.device) == "cpu":
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    wbits, abits = args.bits
    progress = not args.no_progress
    from tqdm.auto import tqdm

    say = tqdm.write if progress else print
    info = anacuda.build_info()
    print(f"anacuda {info['version']} | torch {torch.__version__} | CUDA kernels: {info['cuda_kernels']} | "
          f"device: {dev} | threads: {torch.get_num_threads()}")
    t_start = time.perf_counter()
    data = C.load_digits(split_seed=args.split_seed, device=dev)
    print(f"digits: {len(data.x_train)} train / {len(data.x_test)} test images (8x8, split seed {args.split_seed})")

    # 1. the float baseline
    print(f"\n[1/3] float CNN, width {args.width}, {args.epochs} epochs, Adam lr {args.lr:g}, batch {args.batch_size}")
    float_model = C.train_float(data, width=args.width, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                seed=args.seed, device=dev, progress=progress, desc="float",
                                on_epoch=lambda r: say(_line("float  ", r)))
    float_acc = C.accuracy(float_model, data.x_test, data.y_test)

    # 2. the quantised copy, trained with ANA
    cfg = C.RunConfig(method="ana", noise=args.noise, strategy=args.strategy, sigma="annealed", window=args.window,
                      power=args.power, schedule=args.schedule, wbits=wbits, abits=abits, weight_eps=args.weight_eps,
                      init="float", epochs=args.epochs, lr=args.lr / 3, batch_size=args.batch_size, width=args.width,
                      seed=args.seed)
    model, ctrl = C.build_quantised(cfg, copy.deepcopy(float_model))
    model.to(dev)
    name = {1: "binary", 2: "ternary"}
    wname, aname = name.get(wbits, f"{wbits}-bit"), name.get(abits, f"{abits}-bit")
    print(f"\n[2/3] {wname} weights / {aname} activations (conv1 and fc stay float), ANA {args.noise} noise "
          f"(sigma0 = {C.SIGMA0[args.noise]:g}), strategy {args.strategy}, {args.schedule} schedule, "
          f"{args.window} window, {args.power} powers, lr {cfg.lr:g}")
    print(f"      layer groups: {ctrl.groups}")
    C.train(model, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, controller=ctrl,
            progress=progress, desc=f"ANA {wname}", on_epoch=lambda r: say(_line("ANA    ", r)))
    final_sigmas = [v["sigma"] for v in ctrl.values()]
    eval_acc = C.accuracy(model, data.x_test, data.y_test)

    # 3. freeze: the deployed network
    frozen = anacuda.freeze(model)
    frozen_acc = C.accuracy(frozen, data.x_test, data.y_test)
    with torch.no_grad():
        same = torch.equal(frozen(data.x_test), model.eval()(data.x_test))
    elapsed = time.perf_counter() - t_start
    print(f"\n[3/3] frozen (integer weight codes, hard quantisers; sigma at the end: {final_sigmas})")
    if any(s > 0 for s in final_sigmas):
        print("      note: the uws schedule decays as (1/(t - tstart + 1))^power and is 0 only below its floor "
              "(1e-3), so sigma has not reached 0 in this many epochs; the frozen model is the hard-stair network")
    for lname, m in frozen.named_modules():
        if hasattr(m, "codes"):
            counts = torch.bincount(m.codes.flatten().long(), minlength=m.levels.numel()).tolist()
            share = ", ".join(f"{lv:+g}: {100 * c / m.codes.numel():.0f}%" for lv, c in zip(m.levels.tolist(), counts))
            print(f"      {lname}: {m.codes.numel()} weights as {m.codes.dtype} codes ({share})")
    frozen_name = f"frozen {wname} model" if wname == aname else f"frozen W:{wname}/A:{aname} model"
    pad = max(len("float model"), len(frozen_name))
    print(f"\n  {'float model':<{pad}}  test accuracy {100 * float_acc:6.2f}%")
    print(f"  {frozen_name:<{pad}}  test accuracy {100 * frozen_acc:6.2f}%   "
          f"(eval-mode {100 * eval_acc:.2f}%; outputs identical: {same})")
    print(f"  gap {100 * (float_acc - frozen_acc):+.2f} points; total time {elapsed:.1f} s on {dev}")
    return dict(float_acc=float_acc, frozen_acc=frozen_acc, eval_acc=eval_acc, outputs_identical=same,
                final_sigmas=final_sigmas, seconds=elapsed)


if __name__ == "__main__":
    main(sys.argv[1:])
