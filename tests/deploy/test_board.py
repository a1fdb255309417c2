"""The board harness end to end with hand-written C: build, run in qemu, count instructions."""

import numpy as np
import pytest

from edgeopt.deploy import mcu
from edgeopt.deploy.targets import get_target

pytestmark = pytest.mark.skipif(mcu.toolchain_missing() is not None,
                                reason=mcu.toolchain_missing() or "")

MODEL_H = """#include <stdint.h>
#define EDGEOPT_INPUT_SIZE 16
#define EDGEOPT_OUTPUT_SIZE 2
int edgeopt_model_invoke(const int8_t *input, int8_t *output);
"""
# A dot product, plus a loop whose instruction count is known exactly: subs + bne per turn.
MODEL_C = """#include "model.h"
int edgeopt_model_invoke(const int8_t *input, int8_t *output) {
    int32_t acc = 0;
    for (int i = 0; i < EDGEOPT_INPUT_SIZE; i++) acc += input[i] * (i - 8);
    EDGEOPT_LAYER_END(0);
    __asm__ volatile("mov r0, %0\\n1: subs r0, #1\\n bne 1b" :: "r"(1000 * (input[0] + 1))
                     : "r0", "cc");
    EDGEOPT_LAYER_END(1);
    output[0] = (int8_t)(acc >> 8);
    output[1] = (int8_t)acc;
    return 0;
}
"""


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_build_run_and_count(tmp_path, target):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.h").write_text(MODEL_H)
    (tmp_path / "c" / "model.c").write_text(MODEL_C)
    (tmp_path / "c" / "selftest.c").write_text("#error the host self-test is not built\n")
    rng = np.random.default_rng(0)
    inputs = rng.integers(-128, 128, size=(3, 16)).astype(np.int8)
    inputs[:, 0] = [0, 4, 9]  # 1000, 5000 and 10000 loop turns
    t = get_target(target)
    elf = mcu.build_elf(tmp_path / "c", t, inputs, tmp_path / "build" / "model.elf")
    run = mcu.run_elf(elf, t)
    acc = (inputs.astype(np.int32) * (np.arange(16) - 8)).sum(axis=1)
    expected = np.stack([(acc >> 8).astype(np.int8), acc.astype(np.int8)], axis=1)
    np.testing.assert_array_equal(run.outputs, expected)
    # two instructions per loop turn: the differences are exact to a few instructions (the
    # first inference also records how many layers the model has)
    steps = np.diff(run.instructions)
    assert abs(steps[0] - 8000) <= 8 and abs(steps[1] - 10000) <= 2, run.instructions
    # per-layer counts (EDGEOPT_LAYER_END): the loop layer is 2 * 1000 * (input[0] + 1)
    loop = [layers[1] for layers in run.layer_instructions]
    assert all(abs(n - 2000 * (k + 1) - 10) < 20 for n, k in zip(loop, [0, 4, 9])), loop
    assert all(sum(layers) <= total for layers, total in zip(run.layer_instructions,
                                                             run.instructions))
    assert 0 < run.stack_bytes < 1024
    size = mcu.image_size(elf)
    assert 500 < size["flash_bytes"] < 8000  # vector table, startup, semihosting, the model
    assert mcu._symbol_bytes(elf) == {"eo_inputs": 3 * 16, "layer_ticks": 4 * 256}  # not counted
    assert size["static_ram_bytes"] < 64 and size["stack_reserved_bytes"] == 0x4000


def test_parse_board_output():
    run = mcu.parse_board_output("EO-BEGIN\nEO-RUN 64 ff01\nEO-RUN 128 0203\n"
                                 "EO-STACK 200\nEO-END\n")
    assert run.instructions == [40, 80]
    assert run.outputs.tolist() == [[-1, 1], [2, 3]]
    assert run.stack_bytes == 200


def test_missing_tool_is_explained(monkeypatch):
    monkeypatch.setattr(mcu.shutil, "which", lambda tool: None)
    reason = mcu.toolchain_missing()
    assert "qemu-system-arm" in reason and "gcc-arm-none-eabi" in reason
