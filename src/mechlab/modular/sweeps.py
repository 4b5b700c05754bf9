"""The modular studies' sweeps (`python -m mechlab sweep NAME`, see `mechlab.core.sweep`):

    grokking_mlp_width   the grokking MLP at hidden widths 64 and 128 (the smallest sweep: tests run it --quick)
"""
from __future__ import annotations

from mechlab.core.sweep import Sweep, register_sweep
from mechlab.modular import studies  # noqa: F401  (registers the modular studies)

GROKKING_MLP_WIDTH = register_sweep(Sweep("grokking_mlp_width", "grokking_mlp", __name__,
                                          grid={"model.d_hidden": [64, 128]}))
