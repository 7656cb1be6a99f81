"""The experiment runner (python3 -m references.experiments): grids, one run, the resumable
parallel CSV, the statistics and the report. Tiny versions: a couple of configurations, one
epoch, a 4-channel CNN."""

import csv
import dataclasses
import itertools
import math
import os

import numpy as np
import pytest
import torch

from anacuda.nn.controller import POWERS, WINDOWS
from anacuda.quantizer import NOISES, STRATEGIES
from references.experiments import core as C
from references.experiments import stats as S
from references.experiments.__main__ import main as experiments_main
from references.experiments.figures import plot_schedules
from references.experiments.grid import GRIDS, family, make_grid
from references.experiments.report import write_report
from references.experiments.runner import COLUMNS, read_rows, run_grid


# --- grids --------------------------------------------------------------------------------------
def test_reduced_grid_is_the_cvpr_design_in_miniature():
    runs = make_grid("reduced")
    seeds = GRIDS["reduced"]["seeds"]
    assert len(seeds) >= 3
    assert len({c.key() for c in runs}) == len(runs)  # no duplicates
    ana = [c for c in runs if c.method == "ana"]
    annealed = {(c.noise, c.strategy, c.window, c.power) for c in ana if c.sigma == "annealed"}
    assert annealed == set(itertools.product(NOISES, STRATEGIES, WINDOWS, POWERS))
    static = {(c.noise, c.strategy) for c in ana if c.sigma == "static"}
    # expectation with a static sigma trains a network that is not the deployed one: excluded
    assert static == set(itertools.product(NOISES, ("mode", "random")))
    assert not any(c.deploy_mismatch for c in runs)
    per_config = {}
    for c in runs:
        per_config.setdefault(dataclasses.replace(c, seed=0).key(), set()).add(c.seed)
    assert all(s == set(seeds) for s in per_config.values())
    # the STE baselines and alpha-blending vs the clipped STE at 1, 2 and 4 bits
    assert {c.method for c in runs} == {"ana", "ste", "ana2019", "alpha_blend"}
    alpha = {(c.method, c.wbits) for c in runs if family(c) == "alpha"}
    assert alpha == set(itertools.product(("alpha_blend", "ste"), (1, 2, 4)))
    assert len(runs) == 3 * (96 + 8 + 2 + 6 + 9)  # the lsq family adds 12 configurations, 3 of them already there
    # on request the excluded combination runs, marked
    more = make_grid("reduced", include_mismatched=True, families=("ana",))
    marked = [c for c in more if c.deploy_mismatch]
    assert len(marked) == 4 * len(seeds) and all(c.strategy == "expectation" and c.sigma == "static" for c in marked)


def test_full_grid_adds_dynamic_mu_and_seeds():
    runs = make_grid("full", families=("ana",))
    assert {c.mu for c in runs} == {"static", "dynamic"} and len({c.seed for c in runs}) == 5


# --- one run --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return C.load_digits()


@pytest.fixture
def one_thread():
    """One torch thread, as the runner's workers use (tiny convolutions; a shared machine makes
    more threads slower), restored afterwards for the rest of the suite."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_one_run_anneals_sigma_to_zero_and_freezes_exactly(data, one_thread):
    cfg = C.RunConfig(noise="logistic", strategy="random", window="same_end", power="progressive", epochs=1,
                      width=4, seed=3)
    model, ctrl = C.build_quantised(cfg, C.make_cnn(cfg.width))
    assert ctrl.values(0)[0]["sigma"] == pytest.approx(C.SIGMA0["logistic"])
    C.train(model, data, epochs=1, lr=3e-3, batch_size=64, seed=3, controller=ctrl)
    assert ctrl.t == 1.0 and all(v["sigma"] == 0.0 for v in ctrl.values())
    from anacuda.nn import quantised_modules

    assert all(float(m.sigma) == 0.0 for _, m in quantised_modules(model) if hasattr(m, "sigma"))
    row = C.run(cfg, data)
    assert row["final_sigma"] == 0.0
    assert row["quant_acc"] == row["eval_acc"]  # the frozen model is the eval-mode model
    assert set(dataclasses.asdict(cfg)) <= set(row) and row["key"] == cfg.key()


def test_builds_every_method(data, one_thread):
    fm = C.make_cnn(4)
    for cfg in make_grid("reduced", seeds=[0]):
        if cfg.noise in ("normal", "triangular"):
            continue
        model, ctrl = C.build_quantised(cfg, C.make_cnn(4) if cfg.init == "scratch" else fm)
        assert type(model.conv1) is torch.nn.Conv2d and type(model.fc) is torch.nn.Linear  # kept in float
        assert type(model.conv2).__name__.startswith("ANA" if cfg.method != "alpha_blend" else "AlphaBlend")
        assert (ctrl is None) == (cfg.method in ("ste",) or (cfg.method == "ana" and cfg.sigma == "static"))
    with pytest.raises(ValueError, match="init='float'"):
        C.run(C.RunConfig(init="float", epochs=1, width=4), data)


def test_lsq_family_crosses_estimators_scales_and_grids():
    runs = make_grid("reduced", families=("lsq",), seeds=[0])
    cells = {(c.method, c.learned, c.levels) for c in runs}
    assert cells == set(itertools.product(("ste", "ana2019", "ana"), (False, True), ("symmetric", "full")))
    assert len(runs) == 12 and all(c.wbits == c.abits == 2 and c.init == "scratch" for c in runs)
    for c in runs:
        assert (c.weight_eps == "learned") == (c.activation_scale == "learned") == c.learned
        assert c.method != "ana" or (c.noise, c.strategy, c.sigma) == ("uniform", "expectation", "annealed")
    # the fixed-scale ternary runs are the baseline and CVPR-grid runs of the same seed (run once)
    fixed = {c.key() for c in runs if not c.learned and c.levels == "symmetric"}
    assert len(fixed) == 3 and fixed <= {c.key() for c in make_grid("reduced", families=("ana", "baseline"), seeds=[0])}
    assert C.quantizer_for(2, "full").levels.tolist() == [-2, -1, 0, 1]
    assert C.quantizer_for(2).levels.tolist() == [-1, 0, 1]
    with pytest.raises(ValueError, match="levels"):
        C.quantizer_for(2, "asymmetric")
    # the learned configurations are new runs, the old keys stay as they were
    assert C.RunConfig().key() == C.RunConfig(activation_scale="fixed", levels="symmetric").key()
    assert len({c.key() for c in runs}) == 12


def test_tiny_lsq_configurations_learn_their_scales_and_freeze_exactly(data, one_thread):
    tiny = make_grid("tiny", families=("lsq",))
    assert [(c.method, c.levels) for c in tiny] == [("ste", "full"), ("ana", "symmetric")]
    for cfg in tiny:
        assert cfg.learned and family(cfg) == "lsq"
        torch.manual_seed(cfg.seed)
        model, ctrl = C.build_quantised(cfg, C.make_cnn(cfg.width))
        assert model.conv2.eps_mode == "learned" and model.act2.eps_mode == "learned"
        assert model.conv2.quantizer.levels.tolist() == C.quantizer_for(2, cfg.levels).levels.tolist()
        w_eps = model.conv2.eps.detach().clone()
        C.train(model, data, epochs=1, lr=3e-3, batch_size=64, seed=cfg.seed, controller=ctrl)
        assert model.conv2.eps.shape == (cfg.width * 2, 1, 1, 1)
        assert not torch.equal(model.conv2.eps.detach(), w_eps)  # the scale was trained
        assert all(torch.isfinite(p).all() and (p > 0).all() for n, p in model.named_parameters() if n.endswith("eps"))
        row = C.run(cfg, data)
        assert row["quant_acc"] == row["eval_acc"] and "learned eps" in row["label"]


def test_lsq_table_pairs_fixed_and_learned_by_seed(tmp_path):
    rows = []
    for (method, learned, levels), s in itertools.product(
            itertools.product(("ste", "ana2019", "ana"), (False, True), ("symmetric", "full")), range(3)):
        from references.experiments.grid import LSQ_ANA

        kw = LSQ_ANA if method == "ana" else {}
        cfg = C.RunConfig(method=method, levels=levels, seed=s, **kw,
                          **(dict(weight_eps="learned", activation_scale="learned") if learned else {}))
        acc = 90 + 2 * learned + (1 if method == "ana" else 0) + s
        rows.append(dict(dataclasses.asdict(cfg), key=cfg.key(), label=cfg.label(), family=family(cfg),
                         deploy_mismatch=False, float_acc=0.99, eval_acc=acc / 100, quant_acc=acc / 100, seconds=1.0))
    table = S.lsq_table(rows)
    assert [(t["levels"], t["estimator"]) for t in table] == list(
        itertools.product(("symmetric", "full"), ("ste", "ana2019", "ana")))
    for t in table:
        d = t["learned_minus_fixed"]
        assert d["diff"][0] == pytest.approx(2.0) and d["wins"] == 3 and d["n"] == 3
        if t["estimator"] == "ste":
            assert t["vs_lsq"] is None
        else:
            assert t["vs_lsq"]["diff"][0] == pytest.approx(1.0 if t["estimator"] == "ana" else 0.0)
    # learned-scale rows stay out of the synchronisation analysis
    assert all(len(v) == 3 for v in S.ana_cells(rows).values()) and len(S.ana_cells(rows)) == 1
    text = write_report(str(tmp_path), rows, figures=False)
    assert "| −2 … 1 | clipped STE / LSQ | 91.00 ± 2.48 | 93.00 ± 2.48 | 2.00 ± 0.00 | 3/3 seeds |" in text


# --- the runner: CSV, resume, parallel workers -----------------------------------------------------
def test_run_grid_writes_rows_and_resumes(tmp_path):
    configs = make_grid("tiny", families=("ana",))
    assert len(configs) == 2
    out = str(tmp_path)
    res = run_grid(configs, out, device="cpu", workers=2, progress=False, log=lambda *a: None)
    assert res["ran"] == 2 and res["failed"] == 0 and res["skipped"] == 0
    rows = read_rows(os.path.join(out, "results.csv"))
    assert len(rows) == 2 and {r["key"] for r in rows} == {c.key() for c in configs}
    with open(os.path.join(out, "results.csv")) as f:
        before = f.read()
    assert next(csv.reader(before.splitlines())) == COLUMNS
    for r in rows:
        assert r["seed"] == 0 and r["epochs"] == 1 and 0 <= r["quant_acc"] <= 1 and r["seconds"] > 0
        assert r["quant_acc"] == r["eval_acc"] and r["float_acc"] is not None and r["family"] == "ana"
    assert len(os.listdir(os.path.join(out, "float"))) == 1  # one float baseline for the seed
    # resume: nothing is run again, the CSV is unchanged
    res = run_grid(configs, out, device="cpu", workers=2, progress=False, log=lambda *a: None)
    assert res["skipped"] == 2 and res["ran"] == 0
    with open(os.path.join(out, "results.csv")) as f:
        assert f.read() == before


def test_cli_dry_run_and_report_only(tmp_path, capsys):
    res = experiments_main(["--grid", "reduced", "--dry-run", "--out", str(tmp_path)])
    assert res["runs"] == 363 and res["counts"] == {"ana": 312, "baseline": 6, "alpha": 18, "lsq": 27}
    # a report from a CSV that someone else wrote (synthetic rows), without running anything
    rows = _synthetic_rows()
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    res = experiments_main(["--grid", "reduced", "--report-only", "--out", str(tmp_path), "--no-figures"])
    with open(res["report"]) as f:
        text = f.read()
    assert "Synchronisation policy vs noise shape" in text and "Alpha-blending vs the clipped STE" in text


# --- statistics --------------------------------------------------------------------------------------
def _synthetic_rows(policy_effect=2.0, noise_effect=0.0, seeds=3):
    """A balanced ANA grid whose accuracy depends on the policy only, plus an alpha pair."""
    rng = np.random.default_rng(0)
    rows = []
    for (i, noise), strategy, (k, (w, p)), s in itertools.product(
            enumerate(NOISES), STRATEGIES, enumerate(itertools.product(WINDOWS, POWERS)), range(seeds)):
        cfg = C.RunConfig(noise=noise, strategy=strategy, window=w, power=p, seed=s)
        acc = 90 + policy_effect * k + noise_effect * i + rng.normal(0, 0.1)
        rows.append(dict(dataclasses.asdict(cfg), key=cfg.key(), label=cfg.label(), family="ana",
                         deploy_mismatch=False, float_acc=0.99, eval_acc=acc / 100, quant_acc=acc / 100, seconds=1.0))
    for m, s in itertools.product(("alpha_blend", "ste"), range(seeds)):
        cfg = C.RunConfig(method=m, wbits=1, abits=1, init="float", seed=s)
        acc = (95 if m == "alpha_blend" else 93) + s
        rows.append(dict(dataclasses.asdict(cfg), key=cfg.key(), label=cfg.label(), family="alpha",
                         deploy_mismatch=False, float_acc=0.99, eval_acc=acc / 100, quant_acc=acc / 100, seconds=1.0))
    return rows


def test_mean_ci_is_the_t_interval():
    m, h, n = S.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(S.mean_ci([5.0])[1])


def test_spreads_and_anova_find_the_factor_that_matters():
    rows = _synthetic_rows(policy_effect=1.0, noise_effect=0.0)
    a, *_levels = S._balanced(S.ana_cells(rows))
    assert a.shape == (4, 3, 8, 3)
    sp = S.spreads(a)
    assert sp["main_range_policy"] == pytest.approx(7.0, abs=0.2) and sp["main_range_noise"] < 0.3
    assert sp["within_policy"] > 10 * sp["within_noise"]
    terms = {t["term"]: t for t in S.anova(a)}
    assert terms["policy (window × power)"]["eta2"] > 0.95 and terms["noise"]["eta2"] < 0.01
    assert terms["policy (window × power)"]["p"] < 1e-10
    assert sum(t["eta2"] for t in terms.values()) == pytest.approx(1.0)
    dif = S.seed_level_differences(a)
    for key in ("within", "main"):
        m, h, n, per_seed = dif[key]
        assert n == 3 and len(per_seed) == 3 and m - h > 0  # policies spread more, significantly
    # pure seed noise: the differences are centred on 0
    rng = np.random.default_rng(1)
    null = np.stack([S.seed_level_differences(90 + rng.normal(0, 1, (4, 3, 8, 3)))["within"][0]
                     for _ in range(200)])
    assert abs(null.mean()) < 0.05


def test_alpha_table_pairs_by_seed():
    (t,) = S.alpha_table(_synthetic_rows())
    assert t["bits"] == 1 and t["n"] == 3 and t["wins"] == 3
    assert t["diff"][0] == pytest.approx(2.0) and t["ab"][0] == pytest.approx(96.0)


def test_report_and_figures(tmp_path):
    text = write_report(str(tmp_path), _synthetic_rows(), figures=True)
    assert "| policy | accuracy |" in text and "AB − STE" in text
    for name in ("experiments_spread_mu_static.png", "experiments_heatmap_mu_static.png",
                 "experiments_alpha_float.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert os.path.exists(plot_schedules(str(tmp_path / "s.png"), 10))


def test_old_csv_keeps_its_keys_and_gains_new_columns(tmp_path):
    from references.experiments.grid import float_config
    from references.experiments.runner import _upgrade_header, done_keys

    cfg = C.RunConfig(seed=2)
    # alpha_end, activation_scale and levels were added later: at their original defaults they do not enter the key
    later = ("alpha_end", "activation_scale", "levels")
    legacy = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in later}
    import hashlib
    import json

    assert cfg.key() == hashlib.sha1(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]
    assert dataclasses.replace(cfg, alpha_end=0.5).key() != cfg.key()
    assert float_config(dataclasses.replace(cfg, alpha_end=0.5)).key() == float_config(cfg).key()
    # a CSV written before the column existed is upgraded in place, rows and keys intact
    path = tmp_path / "results.csv"
    old_cols = [c for c in COLUMNS if c not in later + ("cpu_seconds",)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols, extrasaction="ignore")
        w.writeheader()
        w.writerow(dict(dataclasses.asdict(cfg), key=cfg.key(), quant_acc=0.5, eval_acc=0.5, seconds=1.0))
    assert done_keys(str(path)) == {cfg.key()}
    header = _upgrade_header(str(path))
    assert set(COLUMNS) <= set(header)
    (row,) = read_rows(str(path))
    assert row["alpha_end"] == 0.8 and row["key"] == cfg.key() and row["quant_acc"] == 0.5
    assert row["activation_scale"] == "fixed" and row["levels"] == "symmetric"
    assert _upgrade_header(str(path)) == header  # idempotent
