"""The training demo (python3 -m examples.demo), in its --quick form."""

import argparse

import pytest
import torch

from examples import demo
from references.experiments import core as C


def test_parse_bits():
    assert demo.parse_bits("2") == (2, 2)
    assert demo.parse_bits("1/4") == (1, 4)
    assert demo.parse_bits("4,8") == (4, 8)
    for bad in ("0", "x", "2/3/4", "9"):
        with pytest.raises(argparse.ArgumentTypeError):
            demo.parse_bits(bad)


def test_parser_defaults_and_choices():
    args = demo.build_parser().parse_args([])
    assert args.bits == (2, 2) and args.noise == "uniform" and args.strategy == "mode"
    assert args.device in ("cpu", "cuda") and args.threads == 1
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--noise", "cauchy"])
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--window", "sliding"])


@pytest.fixture
def restore_threads():
    """The demo sets torch's thread count (1 by default); give the rest of the suite its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_quick_demo_trains_anneals_and_freezes(capsys, restore_threads):
    res = demo.main(["--quick", "--no-progress", "--device", "cpu", "--noise", "normal", "--strategy",
                     "expectation", "--window", "partition", "--seed", "1"])
    assert torch.get_num_threads() == 1
    out = capsys.readouterr().out
    # one line per epoch for each of the two trainings, with loss, accuracy and sigma
    assert out.count("float   epoch") == 2 and out.count("ANA     epoch") == 2
    assert "sigma(group 1)" in out and "frozen ternary model" in out
    # the controller annealed every group's sigma to exactly 0 by the end
    assert res["final_sigmas"] and all(s == 0.0 for s in res["final_sigmas"])
    # the frozen (deployed) network is the eval-mode network: same outputs, same accuracy
    assert res["outputs_identical"] is True
    assert res["frozen_acc"] == res["eval_acc"]
    # it learned something (10 classes: chance is 10 %)
    assert res["float_acc"] > 0.5 and res["frozen_acc"] > 0.2


def test_data_split_is_fixed_and_stratified():
    a, b = C.load_digits(split_seed=0), C.load_digits(split_seed=0)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert len(a.x_train) + len(a.x_test) == 1797 and a.x_train.shape[1:] == (1, 8, 8)
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 55 and counts.max() <= 62  # stratified: about 60 per class
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4
    assert not torch.equal(C.load_digits(split_seed=1).y_test, a.y_test)
