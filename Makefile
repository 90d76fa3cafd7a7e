# Two commands: `make run` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: run test bench migrate install clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(PY) manage.py migrate --noinput

run: migrate
	@set -a; [ -f .env ] && . ./.env; set +a; \
	echo "Serving on http://$(HOST):$(PORT)/"; \
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatsite.asgi:application

test: $(STAMP)
	$(PY) manage.py migrate --noinput >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data/staticfiles .pytest_cache
