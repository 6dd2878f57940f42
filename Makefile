# One virtualenv in .venv; every target creates it as needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test run test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

# torch is test-only (the reference test). Pin it before anything can ask for it:
# unpinned, pip would take a multi-GB CUDA build.
install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'

run: install
	$(BIN)/iraas up

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The browser test drives Debian's Chromium (Playwright's own browser download cannot work here).
/usr/bin/chromium:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium

# The AWS tests judge every recorded AWS call with iam-simulate, a Node library (test-only).
/usr/bin/npm:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq nodejs npm

# The alert rules in docs/ are checked by promtool, from Debian's prometheus package (test-only).
/usr/bin/promtool:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends prometheus

# The PostgreSQL backends are tested against a real server (tests/pgserver.py starts a private one).
/usr/lib/postgresql:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends postgresql

# The container image is built without a daemon or a registry: buildah on a debootstrap base.
/usr/bin/buildah /usr/sbin/debootstrap:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends buildah debootstrap

tests/iam/node_modules: tests/iam/package-lock.json /usr/bin/npm
	npm ci --prefix tests/iam --silent --no-audit --no-fund
	touch $@

test: lint /usr/bin/chromium /usr/bin/promtool /usr/lib/postgresql /usr/bin/buildah /usr/sbin/debootstrap tests/iam/node_modules
	$(BIN)/python -m pytest

# Every benchmark, figures printed (docs/benchmarks.md has the last run's).
bench: install-test
	$(BIN)/iraas bench model --procs 2
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/queue_sqlite.py
	$(BIN)/python benchmarks/service.py --plot docs/spike.png
	$(BIN)/python benchmarks/versus.py
	$(BIN)/python benchmarks/trips.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ledger.py

clean:
	rm -rf $(VENV) build *.egg-info tests/iam/node_modules
