"""Model zoo: small reference architectures, untrained (`create`) or trained once and cached
(`pretrained`).

    net = create("resnet8", input_shape=(1, 28, 28), num_classes=10)
    net = pretrained("resnet8", "mnist5k")          # trains on first use, then loads from cache
    pretrained_info("resnet8", "mnist5k").test_accuracy
"""

from __future__ import annotations

from edgeopt.zoo.catalog import check_input_shape, create, names
from edgeopt.zoo.pretrained import PretrainedInfo, cache_root, pretrained, pretrained_info

__all__ = [
    "PretrainedInfo",
    "cache_root",
    "check_input_shape",
    "create",
    "names",
    "pretrained",
    "pretrained_info",
]
