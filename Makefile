# botmodels: `make serve` serves the default offline model set; `make test` runs every check.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= $(or $(BOTMODELS_PROFILE),offline)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: serve test lint build image bench import-models clean system-deps test-system-deps buildah

# OCR engine (Debian tesseract 5 + English/Portuguese/Spanish data): installed only when missing,
# so repeated `make` runs never touch apt. Chosen over rapidocr by measurement (docs/benchmarks.md, Vision and OCR).
TESSERACT_PKGS := tesseract-ocr tesseract-ocr-eng tesseract-ocr-por tesseract-ocr-spa
system-deps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
		command -v tesseract >/dev/null 2>&1 || \
			echo "warning: install tesseract 5 (+ eng/por/spa data) for the OCR runner"; \
		exit 0; \
	fi; \
	missing=$$(for p in $(TESSERACT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The tests' PostgreSQL server (tests/test_jobs_postgres.py and tests/test_replicas_serve.py
# start one in a temporary directory): Debian's postgresql, installed only when missing; the
# running service needs none unless BOTMODELS_DATABASE_URL is set.
test-system-deps:
	@if command -v dpkg >/dev/null 2>&1 && ! dpkg -s postgresql >/dev/null 2>&1; then \
		echo "installing postgresql"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql; \
	fi

$(VENV)/.runtime: requirements.txt pyproject.toml scripts/install_torch.sh | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

import-models: $(VENV)/.runtime
	$(PY) scripts/import_models.py $(PROFILE)

# Every runner kind, the language model (opt-in in the settings' default) included.
serve: import-models
	BOTMODELS_PROFILE=$(PROFILE) \
	BOTMODELS_RUNNERS=$${BOTMODELS_RUNNERS:-$$($(PY) -c 'from botmodels.config import KNOWN_RUNNERS; print(",".join(KNOWN_RUNNERS))')} \
	$(VENV)/bin/bentoml serve service:BotModels

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint test-system-deps
	$(VENV)/bin/pytest

# The GPU Bento: `make image PROFILE=gpu BENTOFILE=bentofile.gpu.yaml` (tagged <version>-gpu).
BENTOFILE     ?= bentofile.yaml
BENTO_VERSION := $(VERSION)$(if $(findstring gpu,$(BENTOFILE)),-gpu)
IMAGE         ?= botmodels

build: import-models
	BOTMODELS_PROFILE=$(PROFILE) $(VENV)/bin/bentoml build -f $(BENTOFILE) --version $(BENTO_VERSION)

# The Bento's OCI image without a Docker daemon: buildah (Debian), installed only when missing,
# like tesseract. Chroot isolation: RUN steps need no OCI runtime or cgroup setup, so the build
# also runs inside an unprivileged container. Push it with `buildah push` (docs/deploy.md).
buildah:
	@command -v buildah >/dev/null 2>&1 || { \
		command -v dpkg >/dev/null 2>&1 || { echo "install buildah (or podman)"; exit 1; }; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends buildah; \
	}

image: build buildah
	BUILDAH_ISOLATION=chroot $(VENV)/bin/bentoml containerize botmodels:$(BENTO_VERSION) \
		--backend buildah --image-tag $(IMAGE):$(BENTO_VERSION)

bench: $(VENV)/.dev
	$(PY) scripts/bench_embeddings.py
	$(PY) scripts/bench_traffic.py
	$(PY) scripts/bench_vision.py
	$(PY) scripts/bench_overhead.py
	$(PY) scripts/bench_generation.py
	$(PY) scripts/bench_speech.py
	$(PY) scripts/bench_detect.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
