"""Quantization configs: what to quantize, to which numeric format, calibrated how."""

from __future__ import annotations

import dataclasses
import enum

from edgeopt.config import Config
from edgeopt.errors import ConfigError, invalid


class Method(str, enum.Enum):
    PTQ = "ptq"
    QAT = "qat"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight_only"


class Granularity(str, enum.Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


class Calibration(str, enum.Enum):
    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Rounding(str, enum.Enum):
    NEAREST = "nearest"
    STOCHASTIC = "stochastic"
    ADAROUND = "adaround"


class NumberFormat(str, enum.Enum):
    INT = "int"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec(Config):
    """How one kind of tensor is quantized.

    `signed=None` picks the runtime's fast path: int8 weights, uint8 activations (U8S8).
    `narrow_range=None` uses [-(2^(b-1)-1), 2^(b-1)-1] for symmetric signed tensors.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_CHANNEL
    group_size: int | None = None
    dtype: NumberFormat = NumberFormat.INT
    signed: bool | None = None
    narrow_range: bool | None = None
    power_of_two_scale: bool = False

    def validate(self) -> None:
        if not 2 <= self.bits <= 16:
            raise invalid("QuantSpec.bits", "an int in [2, 16]", self.bits)
        if self.granularity is Granularity.PER_GROUP:
            if self.group_size is None or self.group_size < 1:
                raise invalid("QuantSpec.group_size", "a positive int when granularity='per_group'",
                              self.group_size)
        elif self.group_size is not None:
            raise ConfigError(
                f"QuantSpec.group_size is only used with granularity='per_group'; "
                f"got group_size={self.group_size} with granularity={self.granularity.value!r}."
            )


def _default_activations() -> QuantSpec:
    return QuantSpec(symmetric=False, granularity=Granularity.PER_TENSOR)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig(Config):
    """Quantize a model. Default: int8 static post-training quantization (W8 per-channel, A8)."""

    kind = "quantize"

    method: Method = Method.PTQ
    weights: QuantSpec = dataclasses.field(default_factory=QuantSpec)
    activations: QuantSpec | None = dataclasses.field(default_factory=_default_activations)
    calibration: Calibration = Calibration.MINMAX
    percentile: float = 99.99
    calibration_samples: int = 512
    rounding: Rounding = Rounding.NEAREST
    equalization: bool = False
    bias_correction: bool = False
    data_free: bool = False
    exclude: tuple[str, ...] = ()  # layer name patterns or types (e.g. "fc", "head.*", "Conv1d")
    weight_overrides: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    epochs: int = 1
    lr: float = 1e-4
    sensitivity: bool = False  # also quantize one layer at a time and record each one's effect
    checkpoint_dir: str | None = None  # QAT: checkpoint every epoch here and resume from it

    def validate(self) -> None:
        for pattern, spec in self.weight_overrides.items():
            if not isinstance(pattern, str) or not isinstance(spec, QuantSpec):
                raise invalid(f"QuantConfig.weight_overrides[{pattern!r}]",
                              "a QuantSpec keyed by a layer name pattern or type", spec)
        if not 0.0 < self.percentile <= 100.0:
            raise invalid("QuantConfig.percentile", "a float in (0, 100]", self.percentile)
        if self.calibration_samples < 1:
            raise invalid("QuantConfig.calibration_samples", "a positive int",
                          self.calibration_samples)
        if self.epochs < 1:
            raise invalid("QuantConfig.epochs", "a positive int", self.epochs)
        if self.lr <= 0:
            raise invalid("QuantConfig.lr", "a positive float", self.lr)
        if self.method is Method.PTQ and self.activations is None:
            raise ConfigError(
                "QuantConfig.activations must be a QuantSpec for method='ptq' (static "
                "quantization); use method='weight_only' to keep activations in float."
            )
        if self.activations is not None and self.activations.granularity is not Granularity.PER_TENSOR:
            raise invalid("QuantConfig.activations.granularity", "'per_tensor'",
                          self.activations.granularity.value)
