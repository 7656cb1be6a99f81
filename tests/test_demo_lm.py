"""The language-model demo (python3 -m examples.demo_lm), in its tiny form."""

import json
import math

import pytest
import torch

from examples import demo_lm as D
from anacuda.nn import BitLinear, TernaryLinear


@pytest.fixture(scope="module")
def corpus():
    return D.load_corpus()


@pytest.fixture
def restore_threads():
    """The demo sets torch's thread count (1 by default); give the rest of the suite its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_corpus_split_is_fixed_and_disjoint(corpus):
    assert len(corpus.train_works) + len(corpus.heldout_works) == 42
    assert corpus.heldout_works[0] == "alls_well_that_ends_well" and len(corpus.heldout_works) == 6
    assert not set(corpus.train_works) & set(corpus.heldout_works)
    assert corpus.train.numel() > 4_000_000 and corpus.heldout.numel() > 500_000
    assert corpus.train.dtype == torch.int64 and int(corpus.train.max()) < len(corpus.chars)
    text = "To be, or not to be"
    assert corpus.decode(corpus.encode(text)) == text
    assert corpus.decode(corpus.heldout[:30]).startswith("ALL'S WELL THAT ENDS WELL")  # the first held-out play
    again = D.load_corpus()
    assert torch.equal(again.heldout, corpus.heldout) and again.chars == corpus.chars


def test_three_runs_share_initialisation_and_differ_in_linear_layers(corpus):
    size = D.SIZES["tiny"]
    models = {run: D.build(run, len(corpus.chars), size, seed=3) for run in D.RUNS}
    f, b, a = (dict(models[r].named_parameters()) for r in D.RUNS)
    assert list(f) == list(b) == list(a)
    for name, p in f.items():
        assert torch.equal(p, b[name]) and torch.equal(p, a[name]), name
    std = f["blocks.0.proj.weight"].std().item()  # GPT-2's scaled initialisation of the residual outputs
    assert std == pytest.approx(0.02 / math.sqrt(2 * size.n_layer), rel=0.1)
    assert isinstance(models["bitnet"].blocks[0].fc1, BitLinear)
    ana = models["ana"].blocks[0].proj
    assert type(ana) is TernaryLinear and ana.norm is not None and ana.weight_quant.sigma.item() == 0.5
    assert isinstance(models["float"].head, torch.nn.Linear) and type(models["ana"].head) is torch.nn.Linear


def test_tiny_demo_prints_three_results(capsys, restore_threads, tmp_path):
    path = tmp_path / "results" / "seed1.json"
    res = D.main(["--size", "tiny", "--steps", "12", "--no-progress", "--sample", "20", "--seed", "1",
                  "--out", str(path)])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == 1
    assert set(res["results"]) == {"float", "bitnet", "ana"} and res["steps"] == 12
    for run, rec in res["results"].items():
        bpc = rec["bits_per_char"]
        # finite, and below the 6.4 bits of a uniform guess over the 84 characters: it learned something
        assert math.isfinite(bpc) and bpc < math.log2(84), (run, bpc)
        assert f"{D.LABELS[run]:<32} {bpc:.3f}" in out
    assert out.count("held-out") >= 4 and "CC BY 2.5" in out and "sample:" in out
    # the results file: what was printed, the settings and the machine
    saved = json.loads(path.read_text())
    assert saved["results"] == res["results"] and saved["steps"] == 12 and saved["settings"]["seed"] == 1
    meta = saved["meta"]
    assert meta["threads"] == 1 and meta["cores"] >= 1 and meta["torch"] == torch.__version__
    assert meta["machine"] and len(meta["load_start"]) == len(meta["load_end"]) == 3
    assert 0 < saved["cpu_seconds"] and 0 < saved["seconds"]
    assert all(0 < r["cpu_seconds"] <= saved["cpu_seconds"] for r in saved["results"].values())


@pytest.mark.parametrize("activations", [False, True])
def test_ana_run_anneals_sigma_to_zero(corpus, activations):
    size = D.SIZES["tiny"]
    model = D.build("ana", len(corpus.chars), size, seed=0, noise="normal", strategy="mode",
                    ana_activations=activations)
    quants = {n: m for n, m in model.named_modules() if n.endswith("_quant")}
    assert len(quants) == 2 * 4 * size.n_layer
    for n, m in quants.items():  # activations: BitNet's (hard, unclipped STE) unless ANA is asked for them too
        noisy = n.endswith("weight_quant") or activations
        assert m.sigma.item() == pytest.approx(D.SIGMA0["normal"] if noisy else 0.0), n
        assert m.identity_backward == (not noisy), n
    ctrl = D.annealer(model, 4)
    annealed = [n for g in ctrl.groups for n in g]
    assert sorted(annealed) == sorted(n for n in quants if n.endswith("weight_quant") or activations)
    D.train(model, corpus, size, 2, 0, "cpu", "ana", ctrl, progress=False)
    assert all(0 < m.sigma.item() < D.SIGMA0["normal"] for n, m in quants.items() if n in annealed)
    D.train(model, corpus, size, 2, 0, "cpu", "ana", ctrl, progress=False)
    assert all(m.sigma.item() == 0 for m in quants.values())


def test_bits_per_char_is_cross_entropy_in_bits(corpus):
    size = D.SIZES["tiny"]

    class Uniform(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, len(corpus.chars))

    assert D.bits_per_char(Uniform(), corpus.heldout, size, "cpu", 5) == pytest.approx(math.log2(len(corpus.chars)))


def test_command_line_checks():
    assert D.parse_runs("float,ana") == ["float", "ana"]
    for bad in ("", "float,int8"):
        with pytest.raises(SystemExit):
            D.parse_runs(bad)
    with pytest.raises(SystemExit):
        D.build_parser().parse_args(["--size", "huge"])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        D.main(["--size", "tiny", "--steps", "0"])
    with pytest.raises(SystemExit, match="--sigma0 must be > 0"):
        D.main(["--size", "tiny", "--sigma0", "0"])


def test_annealer_groups_follow_blocks_with_one_schedule(corpus):
    """One group per block, all on the whole run: the same σ everywhere at every step as one
    group of all the noisy quantisers."""
    size = D.SIZES["small"]
    model = D.build("ana", len(corpus.chars), size, seed=0)
    ctrl = D.annealer(model, 100)
    assert [sorted({n.split(".")[1] for n in g}) for g in ctrl.groups] == [["0"], ["1"]]
    assert all(n.startswith(f"blocks.{i}.") and n.endswith("weight_quant") for i, g in enumerate(ctrl.groups)
               for n in g)
    for t in (0, 17, 50, 99, 100):
        ctrl.step(t)
        assert len({v["sigma"] for v in ctrl.values()}) == 1
        assert ctrl.values()[0]["sigma"] == pytest.approx(0.5 * (1 - t / 100) ** 2)


def test_summary_table_of_seeds(tmp_path):
    meta = dict(machine="CPU X, 1 threads", cores=2, torch="t", date="d", nice=19, load_start=[1, 1, 1],
                load_end=[2, 2, 2])
    paths = []
    for seed, (f, b) in enumerate([(2.0, 3.0), (2.2, 3.4), (2.4, 3.2)]):
        rec = dict(settings=dict(seed=seed, size="small"), steps=10, seconds=60.0, cpu_seconds=50.0, meta=meta,
                   results={"float": {"bits_per_char": f}, "bitnet": {"bits_per_char": b}})
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(rec))
    table = D.summary([str(p) for p in paths])
    assert "| float | 2.200 ± 0.200 | 2.000, 2.200, 2.400 |" in table
    assert "| ternary, BitNet STE | 3.200 ± 0.200 | 3.000, 3.400, 3.200 |" in table
    assert "ANA" not in table.split("\n\n")[0] and "seeds 0, 1, 2" in table
    assert "- seed 2: CPU X, 1 threads (2 cores)" in table and "60 s wall, 50 s CPU" in table
    other = json.loads(paths[0].read_text())
    other["settings"]["size"] = "tiny"
    paths[0].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="one setting"):
        D.summary([str(p) for p in paths])
