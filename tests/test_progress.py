"""A quiet run silences every technique's bars, not only its own."""

from torch import nn

import edgeopt as eo
from edgeopt.progress import bar, quiet
from helpers import toy_classification


def test_bars_made_inside_quiet_are_disabled_and_nesting_restores():
    with quiet():
        with quiet():
            assert bar(range(2)).disable
        assert bar(range(2)).disable
    with quiet(False):
        assert not bar(range(2)).disable


def test_a_technique_applied_inside_quiet_writes_no_bar(capfd):
    model, data = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), toy_classification()
    eo.apply(model, eo.QuantConfig(), data=data)
    assert "calibrate" in capfd.readouterr().err  # the bar is there by default
    with quiet():
        eo.apply(model, eo.QuantConfig(), data=data)
    assert "calibrate" not in capfd.readouterr().err
