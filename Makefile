# TraceCode developer entry points. Everything runs from a local virtual environment that
# this Makefile creates from pyproject.toml, so a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BOARD  ?= esp32-devkitc
PORT   ?=
IMAGE  ?=
PORTS  := $(foreach p,$(PORT),--port $(p))

.PHONY: setup demo test test-slow bench dp3t soak fuzz check-firmware flash sync hil clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py host/tracecode/_native/matchcore.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tracecode demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15 tests

# The runs that take minutes each: three more scenarios end to end on virtual badges, the
# office on real-MicroPython badges (pytest marker `slow`)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

# Fault campaigns at full size (CI runs fixed-seed slices inside `make test`)
fuzz: $(STAMP)
	$(BIN)/python tools/campaign_db.py --runs 200 --seed 1
	$(BIN)/python tools/fuzz_export.py --inputs 1000000 --seed 1 --cli 120
	$(BIN)/python tools/fuzz_locked.py --frames 100000 --seed 1 --backend vm

check-firmware: $(STAMP)
	$(BIN)/python tools/check_firmware.py

# Every benchmark runs even when one misses its target; make bench fails at the end if any did.
BENCHES = tools/bench_match.py tools/bench_firmware.py "tools/bench_fleet.py --badges 50 --days 14" \
	tools/bench_sync.py "tools/calibrate.py --seeds 1 2" tools/bench_battery.py \
	tools/bench_vm_heap.py "tools/bench_vm_ram.py --minutes 1440 --crowd-kind phones"
bench: $(STAMP)
	@failed=""; for b in $(BENCHES); do \
		echo "$(BIN)/python $$b"; $(BIN)/python $$b || failed="$$failed\n  $$b"; \
	done; \
	if [ -n "$$failed" ]; then printf "make bench: failed or missed a target:%b\n" "$$failed" >&2; exit 1; fi

# DP-3T field data (docs/channel.md): make dp3t DP3T=/path/to/a/local/clone/of/bt-measurements
DP3T ?=
dp3t: $(STAMP)
	@test -n "$(DP3T)" || { echo "make dp3t: set DP3T=/path/to/bt-measurements (a local clone)"; exit 2; }
	$(BIN)/python tools/dp3t_fit.py $(DP3T) --plot docs/channel-fit.png
	$(BIN)/python tools/dp3t_score.py $(DP3T)

# Key server under load on loopback: 2,000-connection burst + slow and hostile clients (docs/keyserver.md);
# badges: 100 unplugged syncs with strangers, 1,000 power cuts on the MicroPython VM (docs/firmware.md)
soak: $(STAMP)
	$(BIN)/python tools/soak_keyserver.py --connections 2000 --slow 40
	$(BIN)/python tools/campaign_badge.py --unplugs 100 --cuts 1000 --seed 1

# Real badges: make flash IMAGE=ESP32_GENERIC.bin [BOARD=...] [PORT="/dev/ttyUSB0 /dev/ttyUSB1"]
flash: $(STAMP)
	$(BIN)/tracecode flash --board $(BOARD) $(if $(IMAGE),--image $(IMAGE),--skip-image) $(PORTS)

sync: $(STAMP)
	$(BIN)/tracecode sync $(PORTS)

# Hardware in the loop: make hil PORT="/dev/ttyUSB0 /dev/ttyUSB1"
hil: $(STAMP)
	$(BIN)/python -m pytest -q tests/hil $(foreach p,$(PORT),--badge-port $(p)) --badge-board $(BOARD)

clean:
	rm -rf $(VENV) out .pytest_cache typings
