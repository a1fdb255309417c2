"""Build C for an MCU target with arm-none-eabi-gcc, run it in qemu-system-arm, read the results.

The board files (board/): a vector table and reset code, a linker script for the MPS2 boards,
semihosting output, and main.c, which runs compiled-in inputs through `edgeopt_model_invoke` and
prints, per input, the timer ticks of the inference and the output bytes as hex.

Instruction counts: qemu runs with `-icount shift=6`, so the emulated CPU retires exactly one
instruction every 2**6 ns of virtual time, and the board's CMSDK timer ticks at 25 MHz (every
40 ns) of that same virtual clock: instructions = ticks * 40 / 64, to within one instruction.
(Debian's qemu ships no TCG plugins such as libinsn.so; -icount is its exact instruction clock.)
The count is of instructions, not cycles: a real Cortex-M4 takes more cycles on loads, branches
and multiply-accumulates than qemu models.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.deploy.targets import Target
from edgeopt.errors import ExportError

BOARD_DIR = Path(__file__).parent / "board"
ICOUNT_SHIFT = 6
TIMER_HZ = 25_000_000  # MPS2 system clock that drives the CMSDK APB timers
INSTRUCTIONS_PER_TICK = (1e9 / TIMER_HZ) / 2**ICOUNT_SHIFT
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm")
_SKIP_SOURCES = {"selftest.c"}  # the host self-test has its own main()
_HARNESS_SYMBOLS = ("eo_inputs", "layer_ticks")  # main.c's test inputs and per-layer ticks


@dataclass
class BoardRun:
    """What one emulator run printed: per input, instructions and output bytes."""

    instructions: list[int]
    outputs: np.ndarray  # int8, (inputs, output size)
    stack_bytes: int
    layer_instructions: list[list[int]] = field(default_factory=list)


def toolchain_missing() -> str | None:
    """None when the MCU toolchain is installed, else a sentence naming what is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return None
    return (f"{', '.join(missing)} not found: install the Debian packages gcc-arm-none-eabi, "
            "libnewlib-arm-none-eabi and qemu-system-arm (`make mcu-toolchain`).")


def require_toolchain() -> None:
    reason = toolchain_missing()
    if reason:
        raise ExportError(reason)


def write_inputs_header(inputs: np.ndarray, path: Path) -> None:
    """inputs.h: `eo_inputs[N][size]`, the int8 inputs main.c runs, in flash (const)."""
    flat = np.asarray(inputs, dtype=np.int8).reshape(len(inputs), -1)
    rows = ",\n".join("{" + ",".join(str(int(v)) for v in row) + "}" for row in flat)
    path.write_text("#include <stdint.h>\n"
                    f"#define EO_NUM_INPUTS {len(flat)}\n"
                    f"static const int8_t eo_inputs[{len(flat)}][{flat.shape[1]}] = {{\n"
                    f"{rows}\n}};\n")


def build_elf(c_dir: Path, target: Target, inputs: np.ndarray, elf: Path,
              extra_sources: tuple[Path, ...] = ()) -> Path:
    """Compile the C in `c_dir` (model.h and its sources) with the board files into `elf`."""
    require_toolchain()
    build = elf.parent
    build.mkdir(parents=True, exist_ok=True)
    write_inputs_header(inputs, build / "inputs.h")
    sources = [p for p in sorted(Path(c_dir).glob("*.c")) if p.name not in _SKIP_SOURCES]
    sources += [BOARD_DIR / "board.c", BOARD_DIR / "main.c", *extra_sources]
    command = ["arm-none-eabi-gcc", *target.cflags, f"-I{build}", f"-I{c_dir}",
               f"-I{BOARD_DIR}", "-include", str(BOARD_DIR / "profile.h"), *map(str, sources), "-T", str(BOARD_DIR / "board.ld"),
               "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
               "-Wl,--gc-sections", "-o", str(elf)]
    _check(command, "arm-none-eabi-gcc")
    return elf


def image_size(elf: Path) -> dict[str, int]:
    """Flash and RAM of a linked image from `arm-none-eabi-size -A`: flash = code + constants +
    initialized data's load copy; static RAM = initialized + zeroed data (the arena). The test
    inputs main.c runs (in flash) and its per-layer tick buffer are the harness's, not counted."""
    text = _check(["arm-none-eabi-size", "-A", str(elf)], "arm-none-eabi-size")
    sections = {m[1]: int(m[2]) for m in re.finditer(r"^(\.\S+)\s+(\d+)\s+\d+", text, re.M)}
    get = sections.get
    harness = _symbol_bytes(elf)
    flash = get(".text", 0) + get(".ARM.exidx", 0) + get(".data", 0) - harness["eo_inputs"]
    static = get(".data", 0) + get(".bss", 0) - harness["layer_ticks"]
    return {"flash_bytes": flash, "static_ram_bytes": static,
            "stack_reserved_bytes": get(".stack", 0)}


def _symbol_bytes(elf: Path) -> dict[str, int]:
    """Sizes of the harness's own symbols in the image (0 where absent)."""
    text = _check(["arm-none-eabi-nm", "-S", str(elf)], "arm-none-eabi-nm")
    sizes = {m[2]: int(m[1], 16) for m in re.finditer(r"^[0-9a-f]+ ([0-9a-f]+) \w (\S+)$",
                                                       text, re.M)}
    return {name: sizes.get(name, 0) for name in _HARNESS_SYMBOLS}


def run_elf(elf: Path, target: Target, *, timeout_s: float = 120.0) -> BoardRun:
    """Run `elf` on the target's emulated board; parse what main.c printed."""
    require_toolchain()
    command = ["qemu-system-arm", "-M", str(target.qemu_machine), "-nographic", "-monitor",
               "none", "-serial", "none", "-semihosting", "-icount", f"shift={ICOUNT_SHIFT}",
               "-kernel", str(elf)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ExportError(f"qemu-system-arm ({target.qemu_machine}) did not finish within "
                          f"{timeout_s:g} s running {elf.name}.") from None
    printed = done.stdout + done.stderr
    if done.returncode != 0 or "EO-END" not in printed:
        raise ExportError(f"{elf.name} failed on {target.qemu_machine} (exit "
                          f"{done.returncode}): {printed.strip()[-400:]}")
    return parse_board_output(printed)


def parse_board_output(printed: str) -> BoardRun:
    runs = re.findall(r"^EO-RUN (\d+) ([0-9a-f]*)$", printed, re.M)
    layers = [[round(int(t) * INSTRUCTIONS_PER_TICK) for t in m.split()]
              for m in re.findall(r"^EO-LAYERS ([\d ]*)$", printed, re.M)]
    stack = re.search(r"^EO-STACK (\d+)$", printed, re.M)
    outputs = np.array([np.frombuffer(bytes.fromhex(h), dtype=np.int8) for _, h in runs])
    return BoardRun(instructions=[round(int(t) * INSTRUCTIONS_PER_TICK) for t, _ in runs],
                    outputs=outputs, stack_bytes=int(stack[1]) if stack else 0,
                    layer_instructions=layers)


def _check(command: list[str], tool: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"{tool} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout
