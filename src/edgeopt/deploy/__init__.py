"""Integer-only deployment: the shared int8 IR, lowering from QDQ ONNX, the numpy integer reference, C code.

API for other back ends (TFLite, the Cortex-M build):

- `ir`: `Graph`, `Tensor`, `Op`, `QParams`, `activation_range`, `quantize_multiplier`.
- `lower.lower_onnx(path, calibration=None) -> Graph`, `lower.lower_model(model, example_input, calibration=None)`.
- `reference.run(graph, x_int8, pow2=False) -> list[np.ndarray]`: edgeopt's integer reference (TFLite
  rounding; `pow2=True`: shift-only requantization, for graphs whose scales are all powers of two);
  `reference.quantize_input(graph, x_float)` maps float inputs in the model's layout to the IR's int8 NHWC.
- `build_c(graph_or_model, out_dir, example_input=None, *, test_inputs=None, pow2=None, compress_weights=True)
  -> CExport`: writes target-neutral C99 to out_dir: `model.h`, `model.c` (weights as const arrays,
  `edgeopt_model_input` (the input's place in the arena) and `edgeopt_model_invoke`; no stdio, no heap;
  `EDGEOPT_LAYER_END(i)` after layer i if the build defines it), `edgeopt_kernels.h/.c`,
  `edgeopt_kernels_compressed.h/.c` (sparse / clustered weights, `c.compress`), `selftest.c` (host main: runs the inputs embedded in `selftest_data.h` and
  compares with the reference's outputs, prints "edgeopt selftest: N/N bit-exact"; `selftest_host R` also
  times R inferences) and a `Makefile` (`make host` builds with gcc and runs it). `test_inputs`: int8
  (N, input size) in the IR layout. pow2=None: shift-only when every scale is a power of two.
  `CExport`: flash_bytes (constants), ram_bytes (arena, with the input), io_bytes (output), arena,
  peak_live_bytes, layers (MACs, weight_bytes, weight_form: dense, int4, narrow, clustered, sparse,
  sparse+clustered).
- `run_host(out_dir, repeats=0) -> str`: `make host` there; what the self-test printed.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"build_c": "edgeopt.deploy.c", "export_c": "edgeopt.deploy.c", "CExport": "edgeopt.deploy.c",
         "run_host": "edgeopt.deploy.c"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeopt.deploy' has no attribute {name!r}")
