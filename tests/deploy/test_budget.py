import numpy as np

from edgeopt.deploy.budget import peak_activation_bytes, weight_bytes
from edgeopt.deploy.ir import Graph, Op, QParams, Tensor

Q = QParams.of(0.1, 0)


def _graph() -> Graph:
    """x (1,4,4,2) -conv-> a (1,4,4,8) -reshape-> b (1,128) -fc-> y (1,10), int4 conv weights."""
    t = {
        "x": Tensor("x", (1, 4, 4, 2), "int8", Q),
        "w": Tensor("w", (8, 3, 3, 2), "int4", Q, np.zeros((8, 3, 3, 2), np.int8)),
        "wb": Tensor("wb", (8,), "int32", Q, np.zeros(8, np.int32)),
        "a": Tensor("a", (1, 4, 4, 8), "int8", Q),
        "b": Tensor("b", (1, 128), "int8", Q),
        "f": Tensor("f", (10, 128), "int8", Q, np.zeros((10, 128), np.int8)),
        "fb": Tensor("fb", (10,), "int32", Q, np.zeros(10, np.int32)),
        "y": Tensor("y", (1, 10), "int8", Q),
    }
    ops = [Op("conv2d", ["x", "w", "wb"], ["a"]), Op("reshape", ["a"], ["b"]),
           Op("fully_connected", ["b", "f", "fb"], ["y"])]
    return Graph(t, ops, ["x"], ["y"])


def test_weight_bytes_packs_int4_and_counts_requantization():
    # conv 144 int4 -> 72 B, biases 4 B each, fc 1280 B, multiplier + shift 8 B per channel
    assert weight_bytes(_graph()) == 72 + 32 + 1280 + 40 + 8 * (8 + 10)


def test_peak_activation_bytes_aliases_reshape():
    # conv: x (32) + a (128) live; fc: b aliases a (128) + y (10)
    assert peak_activation_bytes(_graph()) == 160
