"""Runs a list of RunConfigs over a pool of worker processes, one CSV row per finished run.

- Resumable: a run whose key is already in the CSV is skipped; rows are appended (and flushed)
  as runs finish, so an interrupted grid loses at most the runs in flight.
- Parallel: ``workers`` processes (spawned, so they are safe with CUDA and OpenMP), each with
  ``torch.set_num_threads(1)`` on the CPU; the data set is loaded once per worker.
- Float baselines: one per seed (and width/epochs/lr/batch), trained first and saved under
  ``<out>/float/``; every row records its seed's float test accuracy, and ``init=float`` runs
  start from a copy of it.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing as mp
import os
import time
import traceback
from typing import Iterable, List, Optional

import torch

from . import core
from .core import RunConfig
from .grid import float_config

#: The CSV's columns: every RunConfig field, then the results.
RESULT_FIELDS = ["key", "label", "family", "deploy_mismatch", "float_acc", "eval_acc", "quant_acc", "train_acc",
                 "final_loss", "final_sigma", "seconds", "cpu_seconds", "device", "torch", "finished"]
COLUMNS = [f.name for f in dataclasses.fields(RunConfig)] + RESULT_FIELDS

_W: dict = {}  # per-worker state


def _init_worker(device: str, split_seed: int, out: str, threads: int):
    if device == "cpu" or threads:
        torch.set_num_threads(max(1, threads))
    _W.update(device=device, data=core.load_digits(split_seed=split_seed, device=device), out=out, floats={})


def float_path(out: str, cfg: RunConfig) -> str:
    return os.path.join(out, "float", f"{float_config(cfg).key()}.pt")


def _float_model(cfg: RunConfig):
    path = float_path(_W["out"], cfg)
    hit = _W["floats"].get(path)
    if hit is None:
        state = torch.load(path, map_location=_W["device"], weights_only=True)
        hit = core.make_cnn(cfg.width).to(_W["device"])
        hit.load_state_dict(state)
        hit.eval()
        _W["floats"][path] = hit
    return hit


def _train_float(cfg: RunConfig) -> str:
    fc = float_config(cfg)
    path = float_path(_W["out"], cfg)
    if not os.path.exists(path):
        model = core.train_float(_W["data"], width=fc.width, epochs=fc.epochs, lr=fc.lr, batch_size=fc.batch_size,
                                 seed=fc.seed, device=_W["device"])
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def _run_one(cfg: RunConfig):
    try:
        from .grid import family

        row = core.run(cfg, _W["data"], _float_model(cfg), device=_W["device"])
        row.update(family=family(cfg), device=str(_W["device"]), torch=torch.__version__,
                   finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        return row, None
    except Exception:  # reported by the parent; the run is not written, so a resume retries it
        return None, f"{cfg.label()} seed {cfg.seed}: {traceback.format_exc()}"


def _upgrade_header(csv_path: str) -> List[str]:
    """The CSV's header; a CSV written before a column existed is rewritten with the current
    columns appended (older rows get the value the column implicitly had, or nothing)."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        missing = [c for c in COLUMNS if c not in header]
        if not missing:
            return header
        rows = list(reader)
    from .core import _LATER_FIELDS

    header += missing
    tmp = f"{csv_path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow({**{c: _LATER_FIELDS.get(c, "") for c in missing}, **r})
    os.replace(tmp, csv_path)
    return header


def done_keys(csv_path: str) -> set:
    if not os.path.exists(csv_path):
        return set()
    with open(csv_path, newline="") as f:
        return {r["key"] for r in csv.DictReader(f) if r.get("key")}


def read_rows(csv_path: str) -> List[dict]:
    """The CSV's rows with numbers as numbers (empty cells as None)."""
    ints = {f.name for f in dataclasses.fields(RunConfig) if f.type in ("int", int)}
    floats = {f.name for f in dataclasses.fields(RunConfig) if f.type in ("float", float)} | {
        "float_acc", "eval_acc", "quant_acc", "train_acc", "final_loss", "final_sigma", "seconds", "cpu_seconds"}
    from .core import _LATER_FIELDS

    rows = []
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            for k, v in _LATER_FIELDS.items():
                if r.get(k) in (None, ""):
                    r[k] = str(v)
            for k, v in list(r.items()):
                if v == "" or v is None:
                    r[k] = None
                elif k in ints:
                    r[k] = int(v)
                elif k in floats:
                    r[k] = float(v)
                elif k == "deploy_mismatch":
                    r[k] = v == "True"
            rows.append(r)
    return rows


def default_workers(device: str) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n if device == "cpu" else min(n, 4))


def run_grid(configs: Iterable[RunConfig], out: str, *, device: str = "cpu", workers: Optional[int] = None,
             split_seed: int = 0, threads: int = 1, progress: bool = True, log=print) -> dict:
    """Runs every config not yet in ``<out>/results.csv``; returns counts and the wall time."""
    os.makedirs(os.path.join(out, "float"), exist_ok=True)
    csv_path = os.path.join(out, "results.csv")
    configs = list(configs)
    done = done_keys(csv_path)
    todo = [c for c in configs if c.key() not in done]
    workers = workers or default_workers(device)
    log(f"{len(configs)} runs in the grid, {len(configs) - len(todo)} already in {csv_path}, {len(todo)} to run "
        f"on {workers} worker(s), device {device}")
    t0 = time.perf_counter()
    errors: List[str] = []
    if todo:
        floats = {}
        for c in todo:
            floats.setdefault(float_path(out, c), c)
        need = [c for p, c in floats.items() if not os.path.exists(p)]
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), _init_worker, (device, split_seed, out, threads)) as pool:
            if need:
                log(f"training {len(need)} float baseline(s)")
                pool.map(_train_float, need)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc="runs", unit="run", dynamic_ncols=True)
            new_file = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
            header = COLUMNS if new_file else _upgrade_header(csv_path)
            with open(csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
                if new_file:
                    writer.writeheader()
                    f.flush()
                for row, err in pool.imap_unordered(_run_one, todo):
                    if err is not None:
                        errors.append(err)
                        (bar.write if bar else log)(f"FAILED {err.splitlines()[0]}")
                    else:
                        writer.writerow(row)
                        f.flush()
                    if bar is not None:
                        bar.update(1)
                        if row is not None:
                            bar.set_postfix_str(f"{row['label'][:40]} s{row['seed']}: {100 * row['quant_acc']:.1f}%")
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - t0
    for e in errors:
        log(e)
    log(f"finished {len(todo) - len(errors)} run(s) in {wall:.0f} s ({len(errors)} failed)")
    return dict(total=len(configs), skipped=len(configs) - len(todo), ran=len(todo) - len(errors),
                failed=len(errors), seconds=wall, csv=csv_path)
