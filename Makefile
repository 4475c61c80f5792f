# Two entry points, both usable on a fresh machine:
#   make demo   set up .venv and run the main job on the bundled UCI Adult data
#   make test   set up .venv and run the test suite
# Set PYTHON to choose the interpreter (3.11 or newer).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: setup demo test bench clean system-deps

setup: $(STAMP)

# libp2p 0.8.1 depends on fastecdsa, which compiles against GMP.
system-deps:
	@if [ ! -f /usr/include/gmp.h ] && [ ! -f /usr/include/x86_64-linux-gnu/gmp.h ] && [ ! -f /usr/include/aarch64-linux-gnu/gmp.h ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing build-essential and libgmp-dev (needed to build fastecdsa)"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q build-essential libgmp-dev; \
		else \
			echo "GMP headers not found: install a C compiler and libgmp-dev (Debian: apt-get install build-essential libgmp-dev)"; exit 1; \
		fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "p2psynth needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m p2psynth.demo --out $(DEMO_DIR) --force

# pytest exits 5 when it collects no tests; that is not a failure.
test: $(STAMP)
	@$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$status

clean:
	rm -rf $(VENV) $(DEMO_DIR)
