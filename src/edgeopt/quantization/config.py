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
    ADAROUND = "adaround"  # learned up/down rounding per weight (Nagel et al. 2020)
    GPTQ = "gptq"  # second-order rounding with error feedback (Frantar et al. 2022)


class Levels(str, enum.Enum):
    UNIFORM = "uniform"
    LOG2 = "log2"  # sign x power-of-two magnitudes (and zero)
    KMEANS = "kmeans"  # a learned codebook (look-up table) of 2^bits values per layer


class BiasCorrection(str, enum.Enum):
    AUTO = "auto"  # empirical with real data, else analytical
    EMPIRICAL = "empirical"  # from the layer outputs on calibration data
    ANALYTICAL = "analytical"  # from batch-norm statistics, no data


class NumberFormat(str, enum.Enum):
    INT = "int"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"
    TF32 = "tf32"

    @property
    def is_float(self) -> bool:
        return self is not NumberFormat.INT


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec(Config):
    """How one kind of tensor is quantized.

    `signed=None` picks the runtime's fast path: int8 weights, uint8 activations (U8S8).
    `narrow_range=None` uses [-(2^(b-1)-1), 2^(b-1)-1] for symmetric signed tensors.
    `dtype` other than "int" simulates a float format (cast round trip, round-to-nearest-even);
    `bits` is then ignored. `levels` other than "uniform" quantizes weights to non-uniform
    levels: "log2" (sign and power-of-two magnitudes) or "kmeans" (a 2^bits-entry codebook).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_CHANNEL
    group_size: int | None = None
    dtype: NumberFormat = NumberFormat.INT
    signed: bool | None = None
    narrow_range: bool | None = None
    power_of_two_scale: bool = False
    levels: Levels = Levels.UNIFORM  # "kmeans" + per_channel: a shared codebook of
    #                                  channel-normalized weights times a scale per channel

    def validate(self) -> None:
        if not 2 <= self.bits <= 16:
            raise invalid("QuantSpec.bits", "an int in [2, 16]", self.bits)
        if self.levels is not Levels.UNIFORM and self.dtype is not NumberFormat.INT:
            raise ConfigError(f"QuantSpec.levels={self.levels.value!r} needs dtype='int'; got "
                              f"dtype={self.dtype.value!r}.")
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
class MixedPrecision(Config):
    """Choose a weight bit width per layer from its sensitivity, under one budget.

    `candidates` are bit widths: 2..8 (integer), 16 (fp16 simulated) and 32 (left in float).
    `size_budget_bytes`: the packed weight size may not exceed it (weights at bits/8 bytes,
    everything else at 4). `accuracy_budget`: the largest drop in top-1 accuracy, in points, on
    the calibration data (labels when given, else agreement with the float model).
    """

    size_budget_bytes: int | None = None
    accuracy_budget: float | None = None
    candidates: tuple[int, ...] = (4, 8)

    def validate(self) -> None:
        if (self.size_budget_bytes is None) == (self.accuracy_budget is None):
            raise ConfigError("MixedPrecision needs exactly one of size_budget_bytes and "
                              f"accuracy_budget; got size_budget_bytes={self.size_budget_bytes}, "
                              f"accuracy_budget={self.accuracy_budget}.")
        if self.size_budget_bytes is not None and self.size_budget_bytes <= 0:
            raise invalid("MixedPrecision.size_budget_bytes", "a positive int",
                          self.size_budget_bytes)
        if self.accuracy_budget is not None and not 0.0 <= self.accuracy_budget <= 100.0:
            raise invalid("MixedPrecision.accuracy_budget", "a float in [0, 100] (points)",
                          self.accuracy_budget)
        allowed = {*range(2, 9), 16, 32}
        if len(self.candidates) < 2 or any(c not in allowed for c in self.candidates):
            raise invalid("MixedPrecision.candidates",
                          "at least two bit widths from 2..8, 16 (fp16) and 32 (float)",
                          self.candidates)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvancedQuantConfig(Config):
    """Rare knobs of the advanced post-training methods."""

    seed: int = 0  # stochastic rounding and data-free synthesis
    input_shape: tuple[int, ...] | None = None  # per sample; data_free without data needs it
    data_free_samples: int = 128
    data_free_steps: int = 100
    data_free_lr: float = 0.1
    equalization_iterations: int = 20
    bias_absorption: bool = True  # with equalization: move bias into the next layer
    relu6_to_relu: bool = False  # with equalization: ReLU6 -> ReLU (fuses; not exact) instead
    #                              of a per-channel clamp (exact; runs as Relu + Min in float)
    bias_correction: BiasCorrection = BiasCorrection.AUTO
    adaround_iterations: int = 1000
    adaround_lr: float = 1e-2
    adaround_regularization: float = 0.01
    adaround_batch_size: int = 32
    # AdaRound/GPTQ (and empirical bias correction): seconds for the whole layer-by-layer
    # refinement, shared over layers by cost; layers left without time keep nearest rounding.
    # None: no limit (every layer runs adaround_iterations).
    time_budget_s: float | None = 480.0
    reconstruction_rows: int | None = 16384  # per layer: (sample, output position) rows kept
    smoothquant_alpha: float = 0.5
    gptq_damping: float = 0.01
    gptq_block_size: int = 128

    def validate(self) -> None:
        positive = {"data_free_samples": self.data_free_samples,
                    "data_free_steps": self.data_free_steps,
                    "equalization_iterations": self.equalization_iterations,
                    "adaround_iterations": self.adaround_iterations,
                    "adaround_batch_size": self.adaround_batch_size,
                    "gptq_block_size": self.gptq_block_size}
        for field, value in positive.items():
            if value < 1:
                raise invalid(f"AdvancedQuantConfig.{field}", "a positive int", value)
        for field, value in {"data_free_lr": self.data_free_lr,
                             "adaround_lr": self.adaround_lr}.items():
            if value <= 0:
                raise invalid(f"AdvancedQuantConfig.{field}", "a positive float", value)
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise invalid("AdvancedQuantConfig.time_budget_s", "a positive float (seconds) or "
                          "None (no limit)", self.time_budget_s)
        if self.reconstruction_rows is not None and self.reconstruction_rows < 1:
            raise invalid("AdvancedQuantConfig.reconstruction_rows", "a positive int or None "
                          "(every output position of every sample)", self.reconstruction_rows)
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise invalid("AdvancedQuantConfig.smoothquant_alpha", "a float in [0, 1]",
                          self.smoothquant_alpha)
        if not 0.0 <= self.gptq_damping < 1.0:
            raise invalid("AdvancedQuantConfig.gptq_damping", "a float in [0, 1)",
                          self.gptq_damping)
        if self.adaround_regularization < 0:
            raise invalid("AdvancedQuantConfig.adaround_regularization", "a float >= 0",
                          self.adaround_regularization)
        if self.input_shape is not None and (not self.input_shape
                                             or any(d < 1 for d in self.input_shape)):
            raise invalid("AdvancedQuantConfig.input_shape",
                          "a tuple of positive ints without the batch dimension", self.input_shape)


_PLACEMENTS: dict[str, tuple[str, ...]] = {
    "all layers": (),
    "convolutions in float": ("Conv1d", "Conv2d"),
    "Linear layers in float": ("Linear",),
}


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
    data_free: bool = False  # calibrate on inputs synthesized from batch-norm statistics
    # migrate activation outliers into the next Linear's weights: None (default) where the
    # calibration data shows token-sequence outliers, with a measured alpha per layer
    # (smoothing.py); True: every Linear, alpha = advanced.smoothquant_alpha; False: never
    smoothquant: bool | None = None
    awq: bool = False  # activation-aware scaling of Linear input channels (low-bit weights)
    mixed_precision: MixedPrecision | None = None  # a bit width per layer under a budget
    exclude: tuple[str, ...] = ()  # layer name patterns or types (e.g. "fc", "head.*", "Conv1d")
    weight_overrides: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    epochs: int = 1
    lr: float = 1e-4
    sensitivity: bool = False  # also quantize one layer at a time and record each one's effect
    checkpoint_dir: str | None = None  # QAT: checkpoint every epoch here and resume from it
    advanced: AdvancedQuantConfig = dataclasses.field(default_factory=AdvancedQuantConfig)

    def placements(self) -> dict[str, QuantConfig]:
        """Where the speed guard may keep layers in float, the requested placement first.

        Only static PTQ has alternatives: on tiny layers the runtime's Q/DQ overhead can cost
        more than int8 arithmetic saves, and only a measurement tells.
        """
        if self.method is not Method.PTQ:
            return {"all layers": self}
        return {label: dataclasses.replace(self, exclude=tuple(self.exclude) + excluded)
                for label, excluded in _PLACEMENTS.items()}

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
        acts = self.activations
        if (acts is not None and not acts.dtype.is_float  # float formats have no granularity
                and acts.granularity is not Granularity.PER_TENSOR):
            raise invalid("QuantConfig.activations.granularity", "'per_tensor'",
                          self.activations.granularity.value)
