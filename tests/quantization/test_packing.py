import numpy as np

from edgeopt.quantization.packing import matmul_nbits_inputs, pack_nibbles


def unpack(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def test_pack_nibbles_low_nibble_first():
    assert pack_nibbles(np.array([1, 2, 15, 0])).tolist() == [0x21, 0x0F]
    assert pack_nibbles(np.array([[3, 4, 5]])).tolist() == [[0x43, 0x05]]


def test_matmulnbits_layout_reconstructs_the_weight():
    rng = np.random.default_rng(0)
    k, n, block = 64, 6, 16
    q = rng.integers(-7, 8, size=(k, n)).astype(np.int8)
    scale = rng.random((k // block, n)).astype(np.float32) + 0.1
    zero = np.zeros((k // block, n), dtype=np.int8)
    packed, scales, zeros = matmul_nbits_inputs(q, scale, zero, 8, block)
    assert packed.shape == (n, k // block, block // 2) and zeros is None
    values = unpack(packed).reshape(n, k).astype(np.float32) - 8  # default zero point 8
    dequant = values * np.repeat(scales.reshape(n, k // block), block, axis=1)
    reference = (q.astype(np.float32) * np.repeat(scale, block, axis=0)).T
    np.testing.assert_allclose(dequant, reference, rtol=1e-6)


def test_asymmetric_zero_points_are_packed():
    q = np.full((32, 2), 3, dtype=np.uint8)
    zero = np.array([[5, 6], [7, 9]], dtype=np.uint8)
    _, _, zeros = matmul_nbits_inputs(q, np.ones((2, 2), np.float32), zero, 0, 16)
    assert zeros is not None and unpack(zeros.reshape(2, 1)).tolist() == [[5, 7], [6, 9]]


def test_slices_pack_like_one_piece_over_the_full_range(monkeypatch):
    """Packing in uint8 slices (no wider copy) equals the int16 computation, -8 and 7 included."""
    from edgeopt.quantization import packing

    rng = np.random.default_rng(1)
    k, n, block = 32, 11, 16
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    zero = rng.integers(-8, 8, size=(k // block, n)).astype(np.int8)
    scale = np.ones((k // block, n), np.float32)
    monkeypatch.setattr(packing, "SLICE_VALUES", 3 * k)  # 3 output features per slice
    packed, _, zeros = matmul_nbits_inputs(q, scale, zero, 8, block)
    want = pack_nibbles((q.T.astype(np.int16) + 8).reshape(n, k // block, block))
    assert np.array_equal(packed, want)
    assert np.array_equal(zeros, pack_nibbles(zero.T.astype(np.int16) + 8).reshape(-1))
