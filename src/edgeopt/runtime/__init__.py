"""Run exported models in ONNX Runtime: accuracy, size, latency and what kernels really run."""

from __future__ import annotations

from edgeopt.runtime.inspect import census, cpu_info, size_on_disk
from edgeopt.runtime.measure import Measurement, compare_latency, measure

__all__ = ["Measurement", "census", "compare_latency", "cpu_info", "measure", "size_on_disk"]
