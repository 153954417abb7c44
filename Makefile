# The two commands of the README. Each sets up .venv/ first (idempotent).
PY := .venv/bin/python

.PHONY: setup demo test test-fast
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest tests -n 2 --dist loadfile -m "not slow"
