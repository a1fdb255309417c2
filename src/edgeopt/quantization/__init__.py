"""Quantization: configs, pure math, observers, quantized modules and graph surgery."""

from edgeopt.quantization.config import AdvancedQuantConfig, MixedPrecision, QuantConfig, QuantSpec

__all__ = ["AdvancedQuantConfig", "MixedPrecision", "QuantConfig", "QuantSpec"]
