"""Deployment targets: one table of budgets, compiler flags and the emulator that runs each MCU.

    t = get_target("cortex-m4")
    t.flash_bytes, t.ram_bytes        # the board class's budgets
    t.cflags, t.qemu_machine          # how edgeopt builds and runs it
    t.latency_ms(instructions)        # at the board class's clock, assumed (see Target)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.errors import invalid

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    kind: str  # "mcu": C built with arm-none-eabi-gcc and run in qemu; "host": ONNX Runtime here
    description: str
    flash_bytes: int | None  # budget for weights + code (None: no budget)
    ram_bytes: int | None  # budget for static data + arena + stack
    cpu: str | None = None
    cflags: tuple[str, ...] = ()
    qemu_machine: str | None = None  # `qemu-system-arm -M` board that emulates the core
    # Latency of an MCU target is assumed, not measured: qemu counts instructions, not cycles.
    clock_hz: float | None = None  # the board class's core clock
    cycles_per_instruction: float = 1.0  # ~1 on a Cortex-M4 for these kernels (2-cycle loads and
    # taken branches push it up, the M7's dual issue down); override with dataclasses.replace

    def latency_ms(self, instructions: float) -> float | None:
        """Milliseconds of `instructions` at this target's clock (None without one)."""
        if self.clock_hz is None:
            return None
        return 1e3 * instructions * self.cycles_per_instruction / self.clock_hz

    @property
    def is_mcu(self) -> bool:
        return self.kind == "mcu"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes, "cpu": self.cpu,
                "qemu_machine": self.qemu_machine, "clock_hz": self.clock_hz,
                "cycles_per_instruction": self.cycles_per_instruction}


# -O2 (not -Os): the speed TFLite Micro and CMSIS-NN builds are measured at; sections per function
# and --gc-sections so the image holds only the kernels the model calls.
_COMMON = ("-std=c99", "-O2", "-mthumb", "-ffunction-sections", "-fdata-sections")

TARGETS: dict[str, Target] = {
    "cortex-m4": Target(
        name="cortex-m4", kind="mcu", cpu="cortex-m4",
        description="Cortex-M4F, 1 MiB flash / 256 KiB SRAM class (e.g. STM32F4), "
                    "emulated as the Arm MPS2 AN386 board",
        flash_bytes=1 * MiB, ram_bytes=256 * KiB,
        cflags=(*_COMMON, "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        qemu_machine="mps2-an386", clock_hz=168e6),  # STM32F407 / F417 maximum
    "cortex-m7": Target(
        name="cortex-m7", kind="mcu", cpu="cortex-m7",
        description="Cortex-M7, 2 MiB flash / 512 KiB SRAM class (e.g. STM32F7), "
                    "emulated as the Arm MPS2 AN500 board",
        flash_bytes=2 * MiB, ram_bytes=512 * KiB,
        cflags=(*_COMMON, "-mcpu=cortex-m7", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
        qemu_machine="mps2-an500", clock_hz=216e6),  # STM32F746 / F767 maximum
    "x86-ort": Target(
        name="x86-ort", kind="host",
        description="ONNX Runtime on this machine's CPU (the stage's int8 ONNX file)",
        flash_bytes=None, ram_bytes=None),
}


def names() -> list[str]:
    return sorted(TARGETS)


def get_target(name: str) -> Target:
    """The profile of target `name`; an unknown name lists the valid ones."""
    if not isinstance(name, str) or name not in TARGETS:
        raise invalid("target", f"one of {', '.join(names())}", name)
    return TARGETS[name]


def fits(target: Target, flash_bytes: int | None, ram_bytes: int | None) -> dict[str, object]:
    """Whether a model's flash and RAM fit `target`'s budgets (None where a figure is unknown)."""
    def within(used: int | None, budget: int | None) -> bool | None:
        if budget is None:
            return True
        return None if used is None else used <= budget

    flash_ok, ram_ok = within(flash_bytes, target.flash_bytes), within(ram_bytes, target.ram_bytes)
    both = None if None in (flash_ok, ram_ok) else bool(flash_ok and ram_ok)
    return {"flash_bytes": flash_bytes, "ram_bytes": ram_bytes, "flash_fits": flash_ok,
            "ram_fits": ram_ok, "fits": both}
