# casefeed — every entry point a developer or CI needs.
#   make demo   run the pipeline locally on generated sample data (moto + real Lambda binaries)
#   make test   every check and test (installs what it needs into .venv/ first)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PYTHON    ?= python3
STAMP     := $(VENV)/.installed-$(shell sha256sum tools/requirements.txt 2>/dev/null | cut -c1-12)
CARGO     ?= cargo
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help tools tmux build demo bench bench-smoke bench-consumer drill fonts sam-test test unit e2e lint fmt clippy template-lint checkov checkov-tools clean

help:
	@echo "make demo   - run the pipeline locally on sample data"
	@echo "make test   - run every check and test"
	@echo "make build  - release build of the Lambda binaries and the casefeed CLI"
	@echo "make bench  - diff benchmark: casefeed vs csv-diff vs the read floor (500k and 5M rows)"
	@echo "make drill  - backpressure drill: the local pipeline while the API goes slow, down and back (~4 min)"
	@echo "make bench-consumer - consumer throughput against a 2,000-message backlog, with and without a rate limit"

# Project-local Python tools (moto server, SAM CLI with the Runtime Interface Emulator, cfn-lint).
tools: $(STAMP)
$(STAMP): tools/requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

build:
	$(CARGO) build --release --workspace --bins

demo: tools build
	./target/release/casefeed demo

# Diff benchmark (see BENCHMARKS.md); data is generated once into bench-data/ (git-ignored).
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--sizes 500k --out bench.md".
BENCH_ARGS ?=
bench: tools build
	./target/release/casefeed bench $(BENCH_ARGS)

# The binaries `make build` wrote (CARGO_TARGET_DIR when set).
RELEASE   := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)/release
SUDO      := $(if $(filter 0,$(shell id -u)),,sudo)

# The drill chart's labels are drawn with a TrueType font read at run time (plotters'
# ab_glyph feature: no fontconfig): DejaVu Sans from Debian's fonts-dejavu-core.
DRILL_FONT ?= /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
fonts:
	@test -f $(DRILL_FONT) || { echo "installing fonts-dejavu-core (the drill chart's labels)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends fonts-dejavu-core; }

# The operator CLI's progress bars are tested in a real terminal: tmux (Debian's package).
tmux:
	@command -v tmux >/dev/null || { echo "installing tmux (the progress-bar test's terminal)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends tmux; }

# Backpressure drill (tools/src/drill.rs, see BENCHMARKS.md): writes .local/drill/drill.csv,
# drill.png and summary.md; exits non-zero when an invariant fails.
# make drill DRILL_ARGS=--quick  is the ~90 s smoke run.
DRILL_ARGS ?=
drill: tools build fonts
	CASEFEED_FONT=$(DRILL_FONT) $(RELEASE)/casefeed drill $(DRILL_ARGS)

# Consumer throughput (tools/src/bench_consumer.rs, see BENCHMARKS.md).
BENCH_CONSUMER_ARGS ?=
bench-consumer: tools build
	$(RELEASE)/casefeed bench-consumer $(BENCH_CONSUMER_ARGS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

template-lint: tools checkov
	$(VENV)/bin/cfn-lint template.yaml
	$(VENV)/bin/sam validate --lint --template template.yaml --region $(AWS_DEFAULT_REGION)

# Checkov (security scan of template.yaml) in a venv of its own: checkov 3.3.30 needs
# packaging<24, pytest 9.2.0 (tools/requirements.txt) packaging>=24. Inside $(VENV)/ so that
# it is git-ignored and removed by `make clean` with the rest.
CHECKOV_VENV  ?= $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell sha256sum tools/requirements-checkov.txt 2>/dev/null | cut -c1-12)
checkov-tools: $(CHECKOV_STAMP)
$(CHECKOV_STAMP): tools/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements-checkov.txt
	@rm -f $(CHECKOV_VENV)/.installed-* && touch $@

# Offline (BC_SKIP_MAPPING, --skip-download: no Prisma Cloud / Bridgecrew API call). Scans
# template.yaml and its resolution with every option on (tests/template/checkov_variants.py:
# Checkov does not look under an Fn::If it cannot evaluate). Fails on any finding that is
# neither fixed nor suppressed in template.yaml with `Metadata: checkov: skip: [{id, comment}]`
# (tests/template checks every suppression has its reason).
CHECKOV_OUT := .local/checkov
checkov: tools $(CHECKOV_STAMP)
	@rm -rf $(CHECKOV_OUT)
	$(VENV)/bin/python tests/template/checkov_variants.py $(CHECKOV_OUT) >/dev/null
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f template.yaml -f $(CHECKOV_OUT)/all-options.json \
	  --framework cloudformation --skip-download --compact --quiet

lint: fmt clippy template-lint

# Unit tests (no AWS) and end-to-end tests (moto + release binaries under the emulator).
unit:
	$(CARGO) test --release --workspace --exclude casefeed-e2e

# `--workspace --test '*'` (every integration test; only casefeed-e2e has any) resolves the
# dependencies' features for the whole workspace, as `build` and `unit` do, so it reuses their
# build. `-p casefeed-e2e` resolves them without the functions' lambda_runtime (serde `rc`,
# tracing `log`, futures-util `sink`/`io`, ...) and so compiled ~60 dependencies a second time.
e2e: tools build tmux
	$(CARGO) test --release --workspace --test '*' -- --test-threads=2

# The benchmark harness itself, on a small file (every tool's answer is checked): proves
# `make bench` works; the figures mean nothing at this size.
bench-smoke: tools build
	./target/release/casefeed bench --sizes 20k --runs 1 --dir .local/bench-smoke

# The SAM path (tools/sam-test.sh): template security tests, sam validate --lint, sam build,
# and - where dockerd can run (root) - sam local invoke of both functions with events/,
# checked against moto and the stand-in API. Installs docker.io/busybox-static if missing.
sam-test: tools build
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/template
	VENV=$(VENV) tools/sam-test.sh

test: tools build lint unit e2e bench-smoke sam-test demo
	@echo "make test: all green"

clean:
	$(CARGO) clean
	rm -rf $(VENV)
