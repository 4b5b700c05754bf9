"""Single-token modular addition (a + b) mod p: data, the grokking MLP, studies, analysis."""
from mechlab.modular import mlp  # noqa: F401  (registers the "modular_mlp" model kind)
