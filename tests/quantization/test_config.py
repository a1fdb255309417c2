import pytest

from edgeopt import QuantConfig, QuantSpec
from edgeopt.errors import ConfigError, ConfigTypeError
from edgeopt.quantization.apply import check_supported


def test_defaults_are_int8_static_u8s8():
    c = QuantConfig()
    assert c.method.value == "ptq"
    assert c.weights.bits == 8 and c.weights.symmetric and c.weights.granularity.value == "per_channel"
    assert c.activations.bits == 8 and not c.activations.symmetric


def test_round_trip_through_dict():
    c = QuantConfig(calibration="minmax", weights=QuantSpec(bits=4, granularity="per_tensor"),
                    exclude=("fc",))
    assert QuantConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs,field", [
    ({"bits": 1}, "QuantSpec.bits"),
    ({"bits": 17}, "QuantSpec.bits"),
    ({"granularity": "per_group"}, "QuantSpec.group_size"),
    ({"granularity": "per_row"}, "QuantSpec.granularity"),
])
def test_bad_spec_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        QuantSpec(**kwargs)


def test_bad_types_are_type_errors():
    with pytest.raises(ConfigTypeError, match="QuantSpec.bits"):
        QuantSpec(bits="8")
    with pytest.raises(ValueError, match="percentile"):
        QuantConfig(percentile=120.0)


def test_unknown_field_from_dict_lists_valid_fields():
    with pytest.raises(ConfigError, match="calibrator is not a known field; valid: .*calibration"):
        QuantConfig.from_dict({"calibrator": "minmax"})


def test_unsupported_option_is_refused_before_work():
    with pytest.raises(ConfigError, match="rounding"):
        check_supported(QuantConfig(method="qat", rounding="adaround"))
