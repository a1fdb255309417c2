"""Quantization: configs, pure math, observers, quantized modules and graph surgery.

Everything is one verb and one config::

    eo.apply(model, QuantConfig(...), data=calib)

Core (QuantConfig.method): "ptq" (static int8, QDQ -> integer kernels), "qat", "dynamic",
"weight_only" (int8, or grouped int4 -> MatMulNBits).

Advanced post-training options, all fields of the same QuantConfig (rare knobs in
``advanced=AdvancedQuantConfig(...)``), applied in this order:

- ``data_free=True``: calibration inputs synthesized to match the batch-norm statistics
  (datafree.py); ``data`` may be None (then ``advanced.input_shape`` gives the sample shape).
- ``mixed_precision=MixedPrecision(size_budget_bytes=... | accuracy_budget=...,
  candidates=(4, 8))``: a weight bit width per layer from its sensitivity (mixed.py); 16 means
  fp16 (simulated), 32 float.
- ``equalization=True``: cross-layer equalization through ReLU/ReLU6, and bias absorption
  (equalization.py).
- ``awq=True`` / ``smoothquant=True``: per-input-channel rescaling of Linear layers, folded into
  the producing LayerNorm/Linear or exported as a Mul (awq.py, smoothquant.py).
- ``rounding``: "nearest", "stochastic" (weights, and QAT's training passes), "adaround"
  (adaround.py) or "gptq" (gptq.py), layer by layer on calibration data (reconstruct.py), with a
  progress bar and ``advanced.time_budget_s``.
- ``bias_correction=True``: empirical with data, analytical from batch-norm statistics without
  (bias_correction.py; ``advanced.bias_correction`` forces one).
- ``QuantSpec(dtype="fp16" | "bf16" | "fp8_e4m3" | "fp8_e5m2" | "tf32")``: float formats,
  simulated by a cast round trip (formats.py, simulated.py), per layer via weight_overrides.
- ``QuantSpec(levels="log2" | "kmeans")``: non-uniform weights (nonuniform.py); log2 at <= 4 bits
  stays on the int8 grid and the integer kernels.

Methods that change weights store integers in QuantizedWeightLayer, so export and the
simulated == deployed guarantee are unchanged. What each method did is returned beside the model
by ``eo.apply_with_stats(...).stats["quant"]`` (QuantStats: per-layer rows and ``methods``).
"""

from edgeopt.quantization.config import AdvancedQuantConfig, MixedPrecision, QuantConfig, QuantSpec

__all__ = ["AdvancedQuantConfig", "MixedPrecision", "QuantConfig", "QuantSpec"]
