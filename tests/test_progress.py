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


def test_transformers_loading_bar_obeys_quiet_and_is_restored(tmp_path, capfd):
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from edgeopt.sources.hf import load_hf

    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8)).save_pretrained(tmp_path)
    capfd.readouterr()
    with quiet():
        load_hf(tmp_path)
    assert "Loading" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # as it was
