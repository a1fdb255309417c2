"""Integer-only deployment: the shared int8 IR, lowering from QDQ ONNX, the numpy integer reference, C code.

API for other back ends (TFLite, the Cortex-M build):

- `ir`: `Graph`, `Tensor`, `Op`, `QParams`, `activation_range`, `quantize_multiplier`.
- `lower.lower_onnx(path) -> Graph`, `lower.lower_model(model, example_input) -> Graph`.
- `reference.run(graph, x_int8) -> list[np.ndarray]`: edgeopt's integer reference (TFLite rounding; a graph
  whose requantization scales are all powers of two can run shift-only with `pow2=True`).
- `build_c(graph_or_model, out_dir, example_input=None, *, test_inputs=None, pow2=None) -> CExport`:
  writes target-neutral C99 sources to out_dir: `model.c`, `model.h`, `weights.c`, `edgeopt_kernels.c/.h`
  (no stdio, no heap), `selftest.c` (main: runs the embedded test inputs, compares with the reference's
  outputs, prints "edgeopt selftest: N/N bit-exact") and a `Makefile` (`make host` builds and runs it with
  gcc). `test_inputs` are int8 arrays in the model's NHWC input layout, or float torch/numpy inputs in the
  model's own layout (quantized with the input scale); the expected outputs come from `reference.run`.
  `CExport` has flash_bytes, ram_bytes (arena), arena (per-tensor offsets), layers (per-layer MACs), files.
"""

from __future__ import annotations
