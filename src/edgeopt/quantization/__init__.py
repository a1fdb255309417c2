"""Quantization: configs, pure math, observers, quantized modules and graph surgery."""

from edgeopt.quantization.config import QuantConfig, QuantSpec

__all__ = ["QuantConfig", "QuantSpec"]
