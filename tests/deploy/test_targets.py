import pytest

from edgeopt.deploy.targets import TARGETS, fits, get_target, names
from edgeopt.errors import ConfigError


def test_profiles():
    assert {"cortex-m4", "cortex-m7", "x86-ort"} <= set(names())
    m4 = get_target("cortex-m4")
    assert m4.is_mcu and m4.qemu_machine == "mps2-an386"
    assert (m4.flash_bytes, m4.ram_bytes) == (1024 * 1024, 256 * 1024)
    assert "-mcpu=cortex-m4" in m4.cflags and "-mfloat-abi=hard" in m4.cflags
    assert get_target("cortex-m7").qemu_machine == "mps2-an500"
    host = get_target("x86-ort")
    assert not host.is_mcu and host.flash_bytes is None
    assert all(t.name == key for key, t in TARGETS.items())


def test_unknown_target_lists_valid_ones():
    with pytest.raises(ConfigError, match="target must be one of cortex-m4, cortex-m7, x86-ort; "
                                          "got 'esp32'"):
        get_target("esp32")


def test_fits():
    m4 = get_target("cortex-m4")
    assert fits(m4, 100_000, 50_000)["fits"] is True
    over = fits(m4, 2_000_000, 50_000)
    assert over["fits"] is False and over["flash_fits"] is False and over["ram_fits"] is True
    assert fits(m4, 100, None)["fits"] is None
    assert fits(get_target("x86-ort"), 10**9, 10**9)["fits"] is True


def test_edgeopt_list_names_the_targets():
    from click.testing import CliRunner

    from edgeopt.cli import main

    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0 and "targets:    cortex-m4, cortex-m7, x86-ort" in result.output
