# QFLARE: `make demo` and `make test` both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The tests also exercise the optional extras (Qiskit circuit backend, DP accountant, CKKS, Ray backend); the demo needs none.
EXTRAS_STAMP := $(VENV)/.extras-stamp

.PHONY: demo test test-long lint typecheck bench clean compose-test compose-test-v2 fuzz

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,qiskit,dp,he,ray]'
	touch $(EXTRAS_STAMP)

demo: $(STAMP)
	$(BIN)/qflare simulate --clients 10 --rounds 20 --task digits

test: $(EXTRAS_STAMP)
	$(BIN)/mypy src/qflare
	$(BIN)/ruff check src tests
	sh scripts/ensure-chromium.sh  # Debian's chromium for tests/test_dashboard_browser.py (quiet, idempotent)
	$(BIN)/python -m pytest -m "not long"

# The long variants (marked `long`: a worker SIGKILLed mid-upload, an edge killed while training, the forecast
# and FLTrust figures, asynchronous rounds over HTTP, device profiles),
# kept out of `make test` so that it stays under 25 minutes; .ci/run runs them after it.
test-long: $(EXTRAS_STAMP)
	$(BIN)/python -m pytest -m long

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src/qflare

# Slow (image builds, a real Docker daemon; about 15-30 minutes): its own target, not part of `make test`.
compose-test:
	bash docker/compose-test.sh

# The same with Compose v2 (`docker compose`, from Debian 13's package, verified; see docs/deploy.md).
compose-test-v2:
	COMPOSE_V2=1 LOG=$${LOG:-runs/compose-test-v2.log} bash docker/compose-test.sh

# The fuzzers of make test (tests/fuzz) with a longer budget: examples per parser / per API operation.
fuzz: $(STAMP)
	QFLARE_FUZZ_EXAMPLES=$${QFLARE_FUZZ_EXAMPLES:-3000} QFLARE_FUZZ_API_EXAMPLES=$${QFLARE_FUZZ_API_EXAMPLES:-100} \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

bench: $(EXTRAS_STAMP)
	$(BIN)/qflare bench

clean:
	rm -rf $(VENV) runs .pytest_cache
