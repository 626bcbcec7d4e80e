# kvmmu task runner.  Every target sets up what it needs first.
#   make book     build the HTML book from the stored notebook outputs -> _build/html/index.html
#   make test     run every test (what .ci/run calls)
#   make execute  re-execute every chapter top to bottom, storing outputs and widget state
#   make lab      open the chapters live in JupyterLab (on a fresh copy: classroom/lab)
#   make classroom  build the nbgrader course, one assignment per chapter (classroom/course)
#   make bench    measure the figures the issues ask for

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup book test execute lab classroom bench constraints clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

book: setup
	$(PY) tools/web_assets.py
	rm -rf _build/html _build/.doctrees
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	$(PY) tools/lite.py _build/html
	@echo "Book: _build/html/index.html"

test: setup
	$(PY) -m pytest

execute: setup
	$(PY) tools/execute_notebooks.py $(NB)

# A class works in classroom/lab, refreshed from book/ each time: the committed
# notebooks are never opened, so never modified.
lab: setup
	$(PY) tools/classroom.py lab
	$(VENV)/bin/jupyter lab --notebook-dir=classroom/lab $(if $(filter 0,$(shell id -u)),--allow-root)

classroom: setup
	$(PY) tools/classroom.py course

bench: setup
	$(PY) tools/bench.py

constraints: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^kvmmu' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf _build .pytest_cache .hypothesis
