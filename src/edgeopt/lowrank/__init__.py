"""Low-rank factorization: truncated SVD (Linear, conv), Tucker-2 and CP (conv), with ranks by
energy, fixed rank, parameter budget or per-layer sensitivity.

    model = eo.apply(model, eo.LowRankConfig(method="svd", energy=0.9))
"""

from edgeopt.lowrank.config import LowRankConfig, Method, Selection
from edgeopt.lowrank.layers import DECOMPOSERS, Decomposer, Factorized

__all__ = ["DECOMPOSERS", "Decomposer", "Factorized", "LowRankConfig", "Method", "Selection"]
