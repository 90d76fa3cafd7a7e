# Two commands: `make run` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench migrate install clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	@set -a; if [ -f .env ]; then . ./.env; fi; set +a; $(PY) manage.py migrate --noinput

run: migrate
	@set -a; if [ -f .env ]; then . ./.env; fi; set +a; \
	host="$${HOST:-127.0.0.1}"; port="$${PORT:-8000}"; \
	echo "Serving on http://$$host:$$port/"; \
	exec $(PY) -m chatsite.serve -b "$$host" -p "$$port" chatsite.asgi:application

test: $(STAMP)
	$(PY) manage.py migrate --noinput >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks, written to docs/benchmarks.md with the machine and date:
# memory while sending 30 MB of PDFs; browsing 10,000 conversations (SQLite, then
# PostgreSQL); streaming load, N = 10..1000 conversations through one daphne
# process, and a sustained run at 100 and 200 (about 12 minutes; see bench/load.py --help).
bench: $(STAMP)
	$(PY) bench/attachment_memory.py
	$(PY) bench/browsing.py
	$(PY) bench/browsing.py --postgres
	$(PY) bench/load.py --pg --redis-stock --before-results bench/results-656e2c5.json

clean:
	rm -rf $(VENV) data/staticfiles .pytest_cache
