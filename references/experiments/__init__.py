"""The papers' claims tested in miniature on scikit-learn's 8x8 digits (research tooling, not
part of the installed anacuda package: run it from the repository root).

``python3 -m references.experiments --grid reduced`` runs the CVPR 2022 design of experiments
(noise × strategy × σ static/annealed × decay window × decay power, 3 seeds), the classic STE
baselines, alpha-blending against the clipped STE at 1, 2 and 4 bits and learned scales (LSQ
and smoothed LSQs) against fixed ones, in parallel over the CPU cores, resumably, and writes ``results.csv``, ``report.md`` and PNG figures to ``--out``.

Modules: ``core`` (data, model, training, one run), ``grid`` (the grids), ``runner`` (the
worker pool and the CSV), ``stats``, ``report`` and ``figures`` (the analysis).
"""

from .core import Digits, RunConfig, build_quantised, load_digits, make_cnn, run, train  # noqa: F401
from .grid import GRIDS, make_grid  # noqa: F401
from .runner import read_rows, run_grid  # noqa: F401

__all__ = ["Digits", "RunConfig", "build_quantised", "load_digits", "make_cnn", "run", "train", "GRIDS", "make_grid",
           "read_rows", "run_grid"]
