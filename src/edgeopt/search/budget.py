"""Budgets of a search: the target's profile, byte sizes written "256KiB", the storage URL.

Everything here is checked before any work, so bad input ends as one `error:` line naming the
option and nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from edgeopt.errors import ConfigError, invalid

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": 1024**2, "k": 1024,
          "m": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | None, option: str) -> int | None:
    """'256KiB' -> 262144 (KiB/MiB are 1024-based, kB/MB 1000-based, a bare number is bytes)."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text <= 0:
            raise invalid(option, "a positive size such as 256KiB, 1MiB or 65536", text)
        return text
    match = _SIZE.match(str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None or float(match.group(1)) <= 0:
        raise invalid(option, "a positive size such as 256KiB, 1MiB, 64kB or 65536 (bytes)", text)
    return int(float(match.group(1)) * unit)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits a fitting model must meet; None: no limit."""

    target: str
    kind: str  # "mcu" (integer-only C) or "host" (ONNX Runtime)
    flash_bytes: int | None
    ram_bytes: int | None
    latency_ms: float | None
    clock_hz: float | None = None  # MCU targets: the clock latency assumes (the target's default)
    cycles_per_instruction: float | None = None  # MCU targets: cycles per counted instruction

    def violations(self, flash: int, ram: int, latency: float | None) -> list[float]:
        """Optuna constraint values: <= 0 where a limit is met (relative excess otherwise)."""
        out = []
        for used, limit in ((flash, self.flash_bytes), (ram, self.ram_bytes),
                            (latency, self.latency_ms)):
            out.append(0.0 if limit is None or used is None else (used - limit) / limit)
        return out

    def fits(self, flash: int, ram: int, latency: float | None) -> bool:
        return all(v <= 0 for v in self.violations(flash, ram, latency))

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _positive(value: float | None, option: str, valid: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise invalid(option, valid, value)
    return float(value)


def make_budget(target: str, flash: str | int | None = None, ram: str | int | None = None,
                latency_ms: float | None = None, clock_mhz: float | None = None,
                cpi: float | None = None) -> Budget:
    """The target's budgets, narrowed by the options given; on an MCU target the clock and
    cycles per instruction that turn predicted instructions into milliseconds (the target's
    assumptions unless given)."""
    from edgeopt.deploy.targets import get_target

    try:
        profile = get_target(target)
    except ConfigError:
        from edgeopt.deploy.targets import names

        raise invalid("--target", f"one of {', '.join(names())}", target) from None
    flash_bytes = parse_bytes(flash, "--flash") or profile.flash_bytes
    ram_bytes = parse_bytes(ram, "--ram") or profile.ram_bytes
    latency_ms = _positive(latency_ms, "--latency-ms", "a positive number of milliseconds")
    clock = _positive(clock_mhz, "--clock-mhz", "a positive clock in MHz (e.g. 168)")
    cpi = _positive(cpi, "--cpi", "a positive number of cycles per instruction (e.g. 1.0)")
    if not profile.is_mcu and (clock, cpi) != (None, None):
        raise invalid("--clock-mhz" if clock is not None else "--cpi", "given only with an MCU "
                      "target (cortex-m4, cortex-m7): x86-ort latency is measured", clock or cpi)
    if profile.is_mcu:
        clock = clock * 1e6 if clock is not None else profile.clock_hz
        cpi = cpi if cpi is not None else profile.cycles_per_instruction
    return Budget(target=target, kind=profile.kind, flash_bytes=flash_bytes, ram_bytes=ram_bytes,
                  latency_ms=latency_ms, clock_hz=clock, cycles_per_instruction=cpi)


_SCHEMES = ("sqlite", "postgresql", "mysql")


def check_storage(url: str | None) -> str | None:
    """An Optuna RDB storage URL: sqlite:///file.db here, postgresql://... across machines."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    expected = "sqlite:///path/study.db or postgresql://user:password@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise invalid("--storage", expected, url) from None
    if parsed.get_backend_name() not in _SCHEMES:
        raise invalid("--storage", expected, url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database:
            raise invalid("--storage", "a file for sqlite (sqlite:///study.db; in-memory "
                          "databases cannot be shared)", url)
        folder = Path(parsed.database).resolve().parent
        if not folder.is_dir():
            raise invalid("--storage", f"a sqlite file in an existing folder ({folder} does not "
                          "exist)", url)
    return url
