"""The hand-written SIMD kernels: codegen layouts, and the x86 VNNI and portable builds of the same model
both bit-exact with the integer reference; the vector requantization equal to the scalar one."""

import shutil
import subprocess

import numpy as np
import pytest
from deploy_models import POW2, inputs, quantized

from edgeopt.deploy import reference
from edgeopt.deploy.c import build_c
from edgeopt.deploy.c.simd import vnni_bias, vnni_weights
from edgeopt.deploy.lower import lower_onnx

HAVE_GCC = shutil.which("gcc") is not None and shutil.which("make") is not None


def _native_macros() -> str:
    if not HAVE_GCC:
        return ""
    done = subprocess.run(["gcc", "-march=native", "-dM", "-E", "-"], input="", capture_output=True, text=True)
    return done.stdout


needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="needs gcc and make (apt-get install gcc make)")
needs_vnni = pytest.mark.skipif("__AVX512VNNI__" not in _native_macros(),
                                reason="this host's CPU (gcc -march=native) has no AVX-512 VNNI")


def test_vnni_weights_blocks_of_16_channels_four_deep():
    w = np.arange(18 * 6, dtype=np.int64).reshape(18, 6) % 127  # 18 output channels, k = 6
    packed = vnni_weights(w.astype(np.int8))
    assert packed.shape == (2, 2, 16, 4)  # two blocks of 16 channels, ceil(6 / 4) words
    assert packed[0, 0, 3].tolist() == w[3, 0:4].tolist()
    assert packed[0, 1, 3].tolist() == [*w[3, 4:6], 0, 0]  # k padded with zero weights
    assert packed[1, 1, 1].tolist() == [*w[17, 4:6], 0, 0]
    assert not packed[1, :, 2:].any()  # padded channels are zero


def test_vnni_bias_folds_the_unsigned_input_offset():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, size=(5, 7)).astype(np.int8)
    b = rng.integers(-1000, 1000, size=5).astype(np.int32)
    x = rng.integers(-128, 128, size=7)
    zp = -3
    u = x + 128  # what VPDPBUSD reads
    want = (x - zp) @ w.T.astype(np.int64) + b
    got = u @ w.T.astype(np.int64) + vnni_bias(w, b, zp)
    np.testing.assert_array_equal(got, want)


@needs_gcc
@pytest.mark.parametrize("name,specs", [("dscnn", ()), ("resnet8", ()), ("resnet8", POW2), ("tcn1d", ()), ("lenet5", ())])
def test_simd_and_portable_builds_are_bit_exact(name, specs, tmp_path):
    _, path = quantized(name, *specs)
    graph = lower_onnx(path, calibration=inputs(name, 16, seed=1))
    x = reference.quantize_input(graph, inputs(name, 6, seed=4).numpy())
    info = build_c(graph, tmp_path / "c", test_inputs=x)
    assert "EO_X86_FIELDS(L0_xw, L0_xb)" in (info.out_dir / "model.c").read_text()
    for flags in ("-O3 -march=native -std=c99", "-O2 -std=c99 -DEDGEOPT_PORTABLE"):
        subprocess.run(["make", "-s", "-C", str(info.out_dir), "clean"], check=True)
        done = subprocess.run(["make", "-s", "-C", str(info.out_dir), "host", f"CFLAGS={flags} -Wall -Werror"],
                              capture_output=True, text=True)
        assert done.stdout.strip() == "edgeopt selftest: 6/6 bit-exact", (flags, done.stdout, done.stderr)


REQUANT_TEST = r"""
#include <stdio.h>
#include <stdlib.h>
#include "edgeopt_kernels.c"
/* x86_requant_store against the scalar requant_ch on extreme and random accumulators, multipliers, shifts */
int main(void) {
    int32_t mult[16], shift[16], acc[16];
    int8_t got[16];
    eo_linear_t p;
    memset(&p, 0, sizeof p);
    p.shift = shift;
    uint64_t s = 88172645463325252ull;
    long bad = 0;
    for (int t = 0; t < 200000; t++) {
        for (int i = 0; i < 16; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            mult[i] = (int32_t)((1u << 30) + (uint32_t)(s % (1u << 30)));
            shift[i] = (int32_t)((s >> 32) % 24) - 18;
            acc[i] = (t % 7 == 0) ? (int32_t)(s >> 11) : (int32_t)((int64_t)(s >> 40) - (1 << 23));
            if (t % 11 == 0 && i < 4) acc[i] = i < 2 ? INT32_MIN + i : INT32_MAX - i + 2;
        }
        p.mult = (t % 5 == 4) ? 0 : mult;
        if (!p.mult) for (int i = 0; i < 16; i++) shift[i] = shift[i] % 8;
        p.out_zp = (int32_t)(s % 41) - 20;
        p.act_min = -128; p.act_max = (t % 3) ? 127 : 60;
        x86_requant_store(&p, _mm512_loadu_si512(acc), 0, 0xFFFF, got);
        for (int i = 0; i < 16; i++) bad += got[i] != (int8_t)requant_ch(&p, acc[i], i);
    }
    printf("mismatches %ld\n", bad);
    return bad != 0;
}
"""


@needs_gcc
@needs_vnni
def test_vector_requantization_equals_scalar(tmp_path):
    from edgeopt.deploy.c import RUNTIME

    (tmp_path / "t.c").write_text(REQUANT_TEST)
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-O2", "-march=native", "-std=c99", f"-I{RUNTIME}", "-o", str(exe), str(tmp_path / "t.c")],
                   check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == "mismatches 0"


def test_cortex_m4_dsp_kernels_are_bit_exact_and_fewer_instructions(tmp_path):
    import dataclasses

    from edgeopt.deploy import mcu
    from edgeopt.deploy.stage import reference_output, run_graph_on_target
    from edgeopt.deploy.targets import get_target

    if mcu.toolchain_missing():
        pytest.skip(mcu.toolchain_missing())
    _, path = quantized("resnet8")  # a 3x3x3 stem (k = 27: the SMLAD loops' scalar tails), 10 classes
    graph = lower_onnx(path, calibration=inputs("resnet8", 16, seed=1))
    x = reference.quantize_input(graph, inputs("resnet8", 2, seed=4).numpy()).reshape(2, -1)
    want = np.stack([reference_output(graph, row) for row in x])
    m4 = get_target("cortex-m4")
    dsp = run_graph_on_target(graph, m4, x, tmp_path / "dsp")
    plain = run_graph_on_target(graph, dataclasses.replace(m4, cflags=(*m4.cflags, "-DEDGEOPT_PORTABLE")), x,
                                tmp_path / "plain")
    np.testing.assert_array_equal(dsp["outputs"], want)
    np.testing.assert_array_equal(plain["outputs"], want)
    assert dsp["instructions_per_inference"] < 0.8 * plain["instructions_per_inference"]
