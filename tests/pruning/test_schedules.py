import pytest

from edgeopt.pruning.schedules import polynomial_points, polynomial_sparsity, round_sparsities


def test_iterative_rounds_remove_the_same_fraction_of_what_is_left():
    rounds = round_sparsities(0.875, 3)
    assert rounds == pytest.approx([0.5, 0.75, 0.875])
    assert round_sparsities(0.3, 1) == pytest.approx([0.3])


def test_polynomial_is_cubic():
    assert polynomial_sparsity(0.8, 0.0) == 0.0 and polynomial_sparsity(0.8, 1.0) == 0.8
    assert polynomial_sparsity(0.8, 0.5) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert polynomial_sparsity(0.8, 0.5, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.125)
    points = polynomial_points(0.9, 4)
    assert points == sorted(points) and points[-1] == pytest.approx(0.9)
    # most of the pruning happens early, when the network is still redundant
    assert points[0] > 0.9 / 4
