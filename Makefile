# make book | make test | make lab | make serve   (each creates .venv on first use)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest workers: both cores by default; each notebook kernel then gets one thread.
JOBS   ?= 2
PORT   ?= 8000

.PHONY: book test unit notebooks lab serve clean browser student

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --keep-going
	@echo
	@echo "The book is built. Open $(CURDIR)/_build/html/index.html, or run 'make serve'."

# The README's test command: the book with warnings as errors, then the unit tests and
# every notebook under nbval, spread over $(JOBS) workers (one notebook per worker at a time).
test: $(STAMP)
	rm -rf _build/html
	$(BIN)/jupyter-book build . -W -n --keep-going
	OMP_NUM_THREADS=$$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )) \
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope \
		--nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout 900 \
		--durations 25 tests notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) tests

# (tests/test_book.py comes along: it is quick, and it loads tests/conftest.py, which records
# each notebook's wall time into book/runtimes.json for the book's runtime page.)
notebooks: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope \
		--nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg tests/test_book.py notebooks

# Debian's Chromium for the browser tests (tests/test_browser.py), from the distribution's
# packages, never a browser downloaded by Playwright. Without it those tests skip (in CI,
# where LAMA_CI=1, they fail instead).
CHROMIUM ?= /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x "$(CHROMIUM)" ]; then echo "Chromium: $$($(CHROMIUM) --version)"; else \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium && \
		$(CHROMIUM) --version; fi

# The student edition: every notebook with its exercises' solutions replaced by stubs that the
# checks in lama.exercises answer with "not yet" (lama/student.py); open it with 'make lab' or upload it.
student: $(STAMP)
	$(BIN)/python -m lama.student notebooks _build/student
	@echo "The student edition is in $(CURDIR)/_build/student."

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

serve:
	@test -d _build/html || { echo "No built book yet: run 'make book' first."; exit 1; }
	@echo "Serving the book at http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(PYTHON) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

clean:
	rm -rf _build .pytest_cache
