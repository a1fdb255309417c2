"""Budgets, sizes and storage URLs: checked before any work, errors name the option."""

import pytest

from edgeopt.errors import EdgeoptError
from edgeopt.search import check_storage, make_budget, parse_bytes


@pytest.mark.parametrize("text, expected", [("256KiB", 262144), ("1MiB", 1048576),
                                            ("64kB", 64000), ("1000", 1000), ("1.5KiB", 1536)])
def test_sizes_parse(text, expected):
    assert parse_bytes(text, "--flash") == expected


@pytest.mark.parametrize("text", ["256 KB of flash", "-3KiB", "0", "KiB", "12XB"])
def test_unparsable_size_names_the_option(text):
    with pytest.raises(EdgeoptError, match="--ram must be a positive size"):
        parse_bytes(text, "--ram")


def test_budget_takes_the_target_defaults_and_narrows_them():
    budget = make_budget("cortex-m4", flash="64KiB")
    assert (budget.flash_bytes, budget.ram_bytes, budget.kind) == (65536, 262144, "mcu")
    assert budget.fits(65536, 1000, None) and not budget.fits(65537, 1000, None)
    assert budget.violations(131072, 0, None) == [1.0, -1.0, 0.0]
    assert make_budget("x86-ort").flash_bytes is None


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(EdgeoptError, match="--target must be one of cortex-m4, cortex-m7, x86-ort"):
        make_budget("esp32")


@pytest.mark.parametrize("url", ["study.db", "redis://localhost/0", "sqlite://",
                                 "sqlite:////no/such/folder/study.db"])
def test_bad_storage_urls_are_refused(url):
    with pytest.raises(EdgeoptError, match="--storage"):
        check_storage(url)


def test_good_storage_urls_pass(tmp_path):
    assert check_storage(f"sqlite:///{tmp_path}/s.db")
    assert check_storage("postgresql://user:secret@db.example/optuna")
