"""python3 -m references.experiments (from the repository root): run a grid (resumably, in
parallel) and write its report."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .grid import FAMILIES, GRIDS, family, make_grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m references.experiments",
        description="The CVPR 2022 ANA design of experiments in miniature (8x8 digits), the STE baselines, "
                    "alpha-blending vs the clipped STE and learned scales (LSQ, smoothed LSQ) vs fixed ones. Writes results.csv (one row per run; resumable), report.md "
                    "and PNG figures to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="reduced",
                   help="reduced: < 30 min on 2 cores; full: 5 seeds, 20 epochs, dynamic mu, 8 bits; tiny: a smoke run")
    p.add_argument("--out", default=None, help="output folder (default: experiments-<grid>)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="which parts to run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the grid's seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    p.add_argument("--alpha-bits", type=int, nargs="+", default=None, help="override the alpha family's bit widths")
    p.add_argument("--alpha-ends", type=float, nargs="+", default=None,
                   help="override the alpha family's ramp ends (fraction of the epochs at which alpha reaches 1)")
    p.add_argument("--limit", type=int, default=None, help="run at most this many configurations (after resume)")
    p.add_argument("--include-mismatched", action="store_true",
                   help="also run expectation with a static sigma (trains a network that is not the deployed one; "
                        "marked deploy_mismatch and left out of the analysis)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when anacuda.cuda_available())")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPU cores; 4 on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed train/test split")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report from the CSV")
    p.add_argument("--no-figures", action="store_true", help="no PNG figures")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = args.out or f"experiments-{args.grid}"
    os.makedirs(out, exist_ok=True)
    configs = make_grid(args.grid, families=tuple(args.families), seeds=args.seeds, epochs=args.epochs,
                        include_mismatched=args.include_mismatched, alpha_bits=args.alpha_bits,
                        alpha_ends=args.alpha_ends)
    result = {"out": out}
    if args.dry_run:
        counts = {}
        for c in configs:
            counts[family(c)] = counts.get(family(c), 0) + 1
        for c in configs:
            print(f"{c.key()}  seed {c.seed}  {family(c):<8} {c.label()}  W{c.wbits}A{c.abits} init {c.init}")
        print(f"{len(configs)} runs: {counts}")
        return dict(result, runs=len(configs), counts=counts)
    if not args.report_only:
        import anacuda
        from .runner import done_keys, run_grid

        device = args.device or ("cuda" if anacuda.cuda_available() else "cpu")
        if device.startswith("cuda") and not anacuda.cuda_available():
            raise SystemExit("references.experiments: --device cuda needs the CUDA kernels and a GPU")
        if args.limit is not None:
            done = done_keys(os.path.join(out, "results.csv"))
            configs = [c for c in configs if c.key() in done] + [c for c in configs if c.key() not in done][:args.limit]
        t0 = time.perf_counter()
        result.update(run_grid(configs, out, device=device, workers=args.workers, split_seed=args.split_seed,
                               threads=args.threads, progress=not args.no_progress))
        result["wall_seconds"] = time.perf_counter() - t0
    from .figures import plot_schedules
    from .report import write_report

    epochs = configs[0].epochs if configs else 10
    if not args.no_figures:
        plot_schedules(os.path.join(out, "experiments_schedules.png"), epochs)
    write_report(out, figures=not args.no_figures, title=f"anacuda experiments: grid {args.grid}")
    print(f"report: {os.path.join(out, 'report.md')}")
    result["report"] = os.path.join(out, "report.md")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
