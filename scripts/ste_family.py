"""Draws docs/ste_family.png: the straight-through-estimator family as presets of the ANA op
(anacuda.ste), forward curve on top and gradient below, all computed with the fused op.

    python3 scripts/ste_family.py [output.png]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from anacuda import Quantizer, plot, ste  # noqa: E402


def family():
    int2 = Quantizer.uniform(2, signed=True)
    ternary = Quantizer.ternary()
    return [
        ste.clipped_ste(int2),
        ste.ste_sign(),
        ste.approx_sign(),
        ste.stochastic_rounding(int2),
        [ste.dsq_like(ternary, s) for s in (0.3, 0.1, 0.03)],
        [ste.gaussian_smoothing(ternary, s) for s in (0.5, 0.25, 0.1)],
        [ste.ana2019(ternary, s) for s in (0.5, 0.25, 0.1, 0.0)],
        ste.hardtanh_ste(),
    ]


TITLES = [
    "clipped STE, 2-bit (fake_quantize)\nuniform σ=0.5, mode",
    "ste_sign (Larq, BinaryNet)\nuniform σ=1, mode",
    "ApproxSign (Bi-Real Net)\ntriangular σ=1, mode",
    "stochastic rounding, 2-bit\nuniform σ=0.5, random",
    "DSQ-like (tanh stair), ternary\nlogistic, expectation",
    "Gaussian smoothing, ternary\nnormal, expectation",
    "ANA 2019, ternary: forward σ annealed\nbackward uniform σ=0.5 fixed",
    "hardtanh STE (clamp), ternary\nuniform σ=0.5, expectation",
]


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(ROOT, "docs", "ste_family.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot.plot_family(family(), out, ncols=4, dpi=80, titles=TITLES,
                     suptitle="Straight-through estimators as presets of the ANA op (anacuda.ste): "
                              "forward (top), gradient (bottom); x in units of eps")
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv)
