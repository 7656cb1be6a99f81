"""What a training step costs: a float network against the same network converted by anacuda,
PyTorch's own QAT and torchao's QAT, eager and torch.compile'd, timed in one run, interleaved
(every round times every variant once), medians and quartiles over the rounds. Prints a
markdown table with each variant's time as a multiple of the float step of the same mode (the
median over rounds of the per-round ratio) and the targets of the step-cost issue met or not;
a variant that cannot be built or run is a row with the reason. Saves .md and .json.

    python benchmarks/train_step.py [--case resnet18] [--case transformer] [--batch N] [--rounds 7]
                                    [--modes eager compiled] [--out DIR]

The networks are CASES below: a ternary ResNet-18 (converted by `anacuda.convert`) and the
language-model demo's small transformer (examples/demo_lm.py, its "small" size, on batches of its
Shakespeare text), whose anacuda steps are the demo's own two ternary models: BitNet's recipe
(`anacuda.nn.BitLinear`) and ANA (`anacuda.nn.TernaryLinear`, its NoiseController stepped every
step). The peers quantise the float network's weight layers but the skipped ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import anacuda  # noqa: E402
from examples import demo_lm  # noqa: E402
from timing import describe, interleaved, load_average, machine_facts, paired_ratio, quartiles  # noqa: E402


# --- the networks --------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    title: str
    build: Callable[[], nn.Module]                       # the float network, in training mode
    batch: Callable[[int, str], tuple]                  # (batch size, device) -> (input, target)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    skip: Sequence[str]                                 # modules every quantised variant keeps in float
    target: float                                       # anacuda's step at most this many float steps
    default_batch: int = 32
    # anacuda's variants: name -> make(float model, case, example) -> model or (model, after_step)
    anacuda: Optional[dict] = None
    optimizer: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None  # default: SGD, momentum 0.9


def _resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).train()


def _images(batch, device):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device))


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(),
        conv2=nn.Conv2d(8, 8, 3, padding=1), bn2=nn.BatchNorm2d(8), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 10))).train()


def _corpus():
    """The demo's text, loaded once (only the transformer needs it)."""
    if not hasattr(_corpus, "value"):
        _corpus.value = demo_lm.load_corpus()
    return _corpus.value


def _plain_linears(model):
    """The demo's NormedLinear (a Linear subclass with an RMSNorm in front) as an RMSNorm then a
    plain Linear holding the same weight, the same computation: the peers swap modules by type,
    and torchao's QATConfig would replace a NormedLinear by a Linear without its norm, torch.ao's
    prepare_qat (exact types) would leave it in float."""
    for name, m in list(model.named_modules()):
        if type(m) is demo_lm.NormedLinear:
            lin = nn.Linear(m.in_features, m.out_features, bias=False)
            lin.weight = m.weight
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.Sequential(OrderedDict(norm=m.norm, linear=lin)))
    return model


def _lm_float(size):
    def build():
        return _plain_linears(demo_lm.build("float", len(_corpus().chars), size, seed=0)).train()
    return build


def _lm_anacuda(run, size):
    """The demo's model of `run`, with the float model's seed (so its initial weights); the ANA
    run with the demo's annealer (over the demo's steps), stepped after every optimiser step."""
    def make(model, case, example):
        built = demo_lm.build(run, len(_corpus().chars), size, seed=0).train()
        if run == "ana":
            return built, demo_lm.annealer(built, size.steps).step
        return built
    return make


def _chars(size):
    def batch(n, device):
        return demo_lm.batch(_corpus().train, replace(size, batch=n), torch.Generator().manual_seed(1), device)
    return batch


def _next_char_loss(logits, y):
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def _adamw(model):
    """The demo's optimiser: AdamW, weight decay 0.1 on the matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95))


def _lm_case(name, title, size_name):
    size = demo_lm.SIZES[size_name]
    return Case(name, f"{title} ({size.n_layer} blocks, d_model {size.d_model}, context {size.block}), AdamW",
                _lm_float(size), _chars(size), _next_char_loss, skip=("tok", "pos", "head"), target=1.3,
                default_batch=size.batch, optimizer=_adamw,
                anacuda={"anacuda BitLinear (BitNet recipe)": _lm_anacuda("bitnet", size),
                         "anacuda TernaryLinear (ANA)": _lm_anacuda("ana", size)})


CASES = {
    "resnet18": Case("resnet18", "ternary ResNet-18, 32x32 images, SGD", _resnet18, _images,
                     nn.functional.cross_entropy, skip=("conv1", "fc"), target=1.2),
    # A two-convolution network that runs every variant in a second (the smoke test), not a result.
    "tiny": Case("tiny", "tiny CNN (smoke test only), 32x32 images, SGD", _tiny_cnn, _images,
                 nn.functional.cross_entropy, skip=("conv1", "fc"), target=1.2),
    "transformer": _lm_case("transformer", "the language-model demo's character-level GPT", "small"),
    # Its "tiny" size (the smoke test), not a result.
    "tiny-transformer": _lm_case("tiny-transformer", "tiny GPT (smoke test only)", "tiny"),
}
DEFAULT_CASES = ["resnet18"]


# --- the variants: each makes a float copy of the network into the network trained ------------
def _weight_layers(model, skip):
    """(name, module) of the Linear and Conv layers not in `skip` (a name or a prefix of one)."""
    def skipped(name):
        return any(name == s or name.startswith(s + ".") for s in skip)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not skipped(n)]


def float_model(model, case, example):
    return model


def anacuda_model(model, case, example):
    return anacuda.convert(model, skip=list(case.skip))


def torch_ao_qat(model, case, example):
    # Eager-mode QAT as its tutorial writes it, x86 (formerly fbgemm) qconfig: 8-bit per-channel
    # weights and 8-bit activations. torch.ao.quantization is deprecated since torch 2.10 in favour
    # of torchao (its DeprecationWarning, silenced here) but still ships and runs in 2.14.
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.qconfig = get_default_qat_qconfig("x86")
        for name in case.skip:
            model.get_submodule(name).qconfig = None
        return prepare_qat(model)


def _int2_weights():
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    # 2-bit symmetric per output channel: the scaled levels are -1, 0, 1 (and rarely -2), the
    # nearest torchao has to anacuda's ternary weights.
    return IntxFakeQuantizeConfig(torch.int2, "per_channel", is_symmetric=True)


def torchao_qat(model, case, example):
    # torchao's QAT API: module swap of every weight layer but the skipped ones. It swaps only
    # nn.Linear and nn.Embedding: on a convolution it raises (the reason in the table).
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    layers = {id(m) for _, m in _weight_layers(model, case.skip)}
    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    quantize_(model, QATConfig(activation_config=act, weight_config=_int2_weights(), step="prepare"),
              filter_fn=lambda m, fqn: id(m) in layers)
    return model


class _FakeQuantizedWeight(nn.Module):
    """torchao's IntxFakeQuantizer as a parametrisation; it takes 2-D weights (rows = channels)."""

    def __init__(self, config):
        super().__init__()
        from torchao.quantization.qat import IntxFakeQuantizer

        self.fq = IntxFakeQuantizer(config)

    def forward(self, w):
        return self.fq(w.flatten(1)).view_as(w)


def torchao_int2_weights(model, case, example):
    # torchao's own fake quantizer on the weights anacuda quantises (convolutions included),
    # wired in with torch.nn.utils.parametrize since its QAT API does not reach convolutions.
    # Weights only: torchao has no activation fake-quantizer for convolutions' inputs.
    from torch.nn.utils import parametrize

    cfg = _int2_weights()
    for _, m in _weight_layers(model, case.skip):
        parametrize.register_parametrization(m, "weight", _FakeQuantizedWeight(cfg))
    return model


def torchao_pt2e_qat(model, case, example):
    # What PyTorch's deprecation notice points to for graph-mode QAT: torch.export, then torchao's
    # prepare_qat_pt2e with the x86 Inductor quantizer (8-bit weights and activations).
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    for name in case.skip:
        quantizer.set_module_name_qconfig(name, None)
    exported = torch.export.export(model, (example,)).module()
    try:
        prepared = prepare_qat_pt2e(exported, quantizer)
    except (ValueError, IndexError) as err:
        why = next((w for m, w in _PT2E_FAILURES.items() if m in str(err)), None)
        if why is None:
            raise
        raise type(err)(f"{err} ({why})") from err
    return move_exported_model_to_train(prepared)


# Why prepare_qat_pt2e fails where it does, found by reducing the failures to small networks.
_PT2E_FAILURES = {
    "more than one output node": "the x86 quantizer's conv-bn-add-relu fusion rejects a module called at several "
                                 "places, as ResNet's BasicBlock calls self.relu twice: pytorch/ao#4478",
    "list index out of range": "the conv-bn QAT fusion fails on a convolution left in float with "
                               "set_module_name_qconfig(name, None), followed by batch norm",
}


# (name, make, peer): `peer` names the library whose QAT the anacuda step must beat. A case's own
# anacuda variants (Case.anacuda) replace the "anacuda" row.
VARIANTS = [
    ("float", float_model, None),
    ("anacuda", anacuda_model, None),
    ("torch.ao prepare_qat (x86, int8)", torch_ao_qat, "PyTorch QAT"),
    ("torchao QATConfig (int2 weights, int8 act.)", torchao_qat, "torchao QAT"),
    ("torchao IntxFakeQuantizer (int2 weights)", torchao_int2_weights, "torchao QAT"),
    ("torchao prepare_qat_pt2e (x86, int8)", torchao_pt2e_qat, "torchao QAT"),
]


def variants(case: Case):
    """The (name, make, peer) rows of `case`."""
    if not case.anacuda:
        return list(VARIANTS)
    own = [(name, make, None) for name, make in case.anacuda.items()]
    return [VARIANTS[0]] + own + [v for v in VARIANTS[1:] if v[0] != "anacuda"]


def anacuda_names(case: Case):
    return list(case.anacuda) if case.anacuda else ["anacuda"]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def step_fn(model, case, x, y, after_step=None):
    opt = (case.optimizer or sgd)(model)

    def step():
        opt.zero_grad(set_to_none=True)
        case.loss(model(x), y).backward()
        opt.step()
        if after_step is not None:  # e.g. ANA's noise controller
            after_step()

    return step


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def compile_note(step) -> str:
    """Runs the first (compiling) step and says what torch.compile made of it: the graphs and the
    graph breaks (between which the step runs eagerly), with the first break's reason."""
    from torch._dynamo.utils import counters

    seen = dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    step()
    new = {k: v - seen.get(k, 0) for k, v in counters["graph_break"].items() if v > seen.get(k, 0)}
    note = f"{counters['stats']['unique_graphs'] - graphs} graphs compiled, {sum(new.values())} graph breaks"
    if new:
        note += f" (first: {next(iter(new)).splitlines()[0][:120]})"
    return note


def measure(case: Case, batch: int, modes, rounds: int, device: str, only: Optional[Sequence[str]] = None):
    x, y = case.batch(batch, device)
    base = case.build().to(device)
    steps, errors, peers = {}, {}, {}
    for name, make, peer in variants(case):
        if only and name not in only and name != "float":
            continue
        for mode in modes:
            key = name if mode == "eager" else f"{name} compiled"
            peers[key] = peer
            try:
                made = make(copy.deepcopy(base), case, x)
                model, after_step = made if isinstance(made, tuple) else (made, None)
                model = model.to(device)
                run = torch.compile(model) if mode == "compiled" else model
                steps[key] = step_fn(run, case, x, y, after_step)
            except Exception as err:  # a variant that cannot be built is a row with the reason
                errors[key] = "prepare: " + first_line(err)
    notes = {}
    for key in [k for k in steps if k.endswith(" compiled")]:  # compiled here, one at a time
        try:
            notes[key] = compile_note(steps[key])
        except Exception as err:
            errors[key] = "compile: " + first_line(err)
            del steps[key]
    t0 = time.time()
    samples, run_errors = interleaved(steps, rounds=rounds, warmup=2)
    errors.update({k: "step: " + v for k, v in run_errors.items()})
    rows = []
    for key, peer in peers.items():
        mode = "compiled" if key.endswith(" compiled") else "eager"
        row = dict(case=case.name, variant=key, mode=mode, peer=peer, batch=batch, device=device,
                   note=notes.get(key, ""))
        if key in samples:
            q1, med, q3 = quartiles(samples[key])
            row.update(median_s=med, q1_s=q1, q3_s=q3, samples_s=samples[key])
            ref = "float" if mode == "eager" else "float compiled"
            if ref in samples:
                row["x_float"] = paired_ratio(samples[key], samples[ref])
        else:
            row["error"] = errors.get(key, "not run")
        rows.append(row)
    return rows, round(time.time() - t0)


def table(rows) -> str:
    out = ["| network | variant | median ms | quartiles ms | x float step (same mode) | note |",
           "|---|---|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r['variant']} | failed | | | {r['error']} |")
            continue
        ratio = f"{r['x_float']:.2f}x" if "x_float" in r else ""
        out.append(f"| {r['case']} | {r['variant']} | {r['median_s'] * 1e3:.1f} | "
                   f"{r['q1_s'] * 1e3:.1f}-{r['q3_s'] * 1e3:.1f} | {ratio} | {r.get('note', '')} |")
    return "\n".join(out)


def targets(rows, case: Case) -> str:
    """Each anacuda variant at most case.target float steps, and faster than every peer row, in
    each mode."""
    lines = []
    by = {r["variant"]: r for r in rows if r["case"] == case.name}
    for mode, suffix in (("eager", ""), ("compiled", " compiled")):
        for own in anacuda_names(case):
            a = by.get(own + suffix)
            if a is None:
                continue
            if "x_float" not in a:
                lines.append(f"- {case.name} {mode}: {own} or float failed ({a.get('error', 'float failed')}): NOT met")
                continue
            got = a["x_float"]
            lines.append(f"- {case.name} {mode}: {own} {got:.2f}x the float step (target <= {case.target}) "
                         f"{'met' if got <= case.target else 'NOT met'}")
            for r in by.values():
                if r["peer"] is None or r["mode"] != mode:
                    continue
                if "error" in r:
                    lines.append(f"- {case.name} {mode}: {own} faster than {r['variant']} ({r['peer']}): "
                                 "no comparison, the peer failed")
                    continue
                rel = paired_ratio(a["samples_s"], r["samples_s"])
                lines.append(f"- {case.name} {mode}: {own} / {r['variant']} ({r['peer']}) = {rel:.2f} (target < 1) "
                             f"{'met' if rel < 1 else 'NOT met'}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--case", action="append", choices=sorted(CASES), help=f"networks (default: {DEFAULT_CASES})")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the network's: 32 images, "
                   "the demo's 64 windows of text)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (one step of every variant each)")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--variant", action="append", help="variant names to run besides float (default: all)")
    p.add_argument("--device", default="cuda" if anacuda.cuda_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if (args.batch is not None and args.batch < 1) or args.rounds < 1:
        p.error(f"--batch and --rounds must be at least 1, got {args.batch} and {args.rounds}")
    cases = args.case or DEFAULT_CASES
    if args.variant:
        names = [v[0] for name in cases for v in variants(CASES[name])]
        bad = [v for v in args.variant if v not in names]
        if bad:
            p.error(f"--variant: unknown {bad}; the variants are {names}")
    meta = machine_facts(args.device)
    meta.update(anacuda=anacuda.build_info(), rounds=args.rounds, modes=args.modes, nice=os.nice(0),
                batch={name: args.batch or CASES[name].default_batch for name in cases})
    try:
        import torchao
        meta["torchao"] = torchao.__version__
    except ImportError:
        meta["torchao"] = None
    rows, goals = [], []
    for name in cases:
        case = CASES[name]
        batch = meta["batch"][name]
        print(f"{case.title}: batch {batch}, {args.rounds} rounds, {' and '.join(args.modes)}", flush=True)
        case_rows, seconds = measure(case, batch, args.modes, args.rounds, args.device, args.variant)
        meta[f"seconds_{name}"] = seconds
        rows += case_rows
        goals.append(targets(case_rows, case))
    meta["load_end"] = load_average()
    text = table(rows)
    batches = ", ".join(f"{name} {b}" for name, b in meta["batch"].items())
    head = (f"{describe(meta)} torchao {meta['torchao']}; nice {meta['nice']}; batch {batches}; "
            f"{args.rounds} interleaved rounds; ratios: the median over rounds of the per-round ratio.")
    report = f"{head}\n\n{text}\n\nTargets:\n" + "\n".join(goals) + "\n"
    print("\n" + report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "-".join(["train_step", args.device] + ([] if cases == DEFAULT_CASES else cases)))
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(report)
    print(f"saved {stem}.json and .md")


if __name__ == "__main__":
    main()
