# Two commands: `make demo` and `make test`. Each creates .venv if it is missing and installs the
# project into it, with the test and docs extras. torch is pinned to the CPU wheel (2.13.0) so pip
# never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install demo test test-fast docs clean fidelity gpu-kit evidence

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[test,docs]" "torch==2.13.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tumorforge demo --out $(DEMO)

# Two pytest-xdist workers, each taking whole files (module fixtures are built once).
# tests/test_docs.py builds the docs site strictly among them.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The development loop: every test not marked slow (no Ray cluster, training run, subprocess
# launch or demo); about 3 minutes on 2 cores. `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The docs site: pages in docs/, mkdocs.yml, built into site/ by Zensical; any warning is an error.
docs: $(STAMP)
	@test -x $(BIN)/zensical || $(BIN)/pip install -e ".[docs]"
	$(BIN)/zensical build --strict

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache site .cache

# The generator fidelity figures of docs/results/fidelity.md (issue 11): whole-scan synthesis into
# four healthy phantom livers (BTCV layout, scale 0.5), 16 cases per scan and profile (default size
# mix), and tumorforge stats beside the lesions of 12 phantom LiTS cases. About 45 minutes on 2 cores.
FID ?= fidelity-out
fidelity: $(STAMP)
	$(BIN)/tumorforge phantoms --layout btcv --out $(FID)/phantoms --cases 4 --scale 0.5 --seed 1
	$(BIN)/tumorforge phantoms --layout lits --out $(FID)/phantoms --cases 12 --scale 0.5 --seed 2
	$(BIN)/tumorforge manifest build $(FID)/phantoms/btcv --layout btcv -o $(FID)/btcv.jsonl
	$(BIN)/tumorforge manifest build $(FID)/phantoms/lits --layout lits -o $(FID)/lits.jsonl
	for p in paper-train paper released; do \
	  $(BIN)/tumorforge synthesize --manifest $(FID)/btcv.jsonl --count 16 --seed 11 \
	    --profile $$p --out $(FID)/$$p || exit 1; done
	$(BIN)/tumorforge synthesize --manifest $(FID)/btcv.jsonl --count 2 --seed 13 \
	  --profile paper --size-mix satellite --out $(FID)/satellite
	for e in 1.1 1.5; do \
	  $(BIN)/tumorforge synthesize --manifest $(FID)/btcv.jsonl --count 2 --seed 12 \
	    --profile paper-train --size-mix medium --paper-eta $$e,$$e --out $(FID)/eta-$$e || exit 1; done
	$(BIN)/tumorforge stats $(FID)/paper-train $(FID)/paper $(FID)/released --real $(FID)/lits.jsonl \
	  --post-effects 24 --out $(FID)/report
	$(BIN)/tumorforge stats $(FID)/eta-1.1 $(FID)/eta-1.5 $(FID)/satellite --out $(FID)/report-eta

# The GPU check's kit (issue 17): cp312 wheels of what the synthesis path imports besides NumPy,
# SciPy, CuPy and torch (the GPU machine has those), at this venv's versions, into .gpu-kit/
# (git-ignored; about 20 MB). Then, through the device tool with carry [".gpu-kit"]:
#   bash tests/gpu/device_check.sh
KIT_PKGS := zarr|numcodecs|donfig|google-crc32c|pyyaml|typing.extensions|packaging|fsspec|nibabel|pytest|pluggy|iniconfig|pygments|monai
gpu-kit: $(STAMP)
	mkdir -p .gpu-kit/wheels
	$(BIN)/pip freeze | grep -iE '^($(KIT_PKGS))==' > .gpu-kit/requirements.txt
	$(BIN)/pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -r .gpu-kit/requirements.txt -d .gpu-kit/wheels
	ls .gpu-kit/wheels

# Evidence for the default tumor model (issue 28): phantom LiTS (80 cases, 2 folds: 40 test scans,
# 64 lesions at 2 mm) and a healthy pool of CHAOS + BTCV phantoms, then
# cluster/examples/experiment-evidence.yaml (real, released, paper-grain, diverse and four
# ablations of diverse): 45 minutes on the 2-core VM of 2026-12-08 (about 90 on the slower VM of
# 2026-12-07). The command resumes where it stopped.
EVIDENCE_DATA := evidence-out/data
evidence: $(STAMP)
	$(BIN)/tumorforge phantoms --out $(EVIDENCE_DATA) --layout lits --cases 80 --seed 11 --scale 0.35
	$(BIN)/tumorforge phantoms --out $(EVIDENCE_DATA) --layout chaos,btcv --cases 4 --seed 12 --scale 0.35
	$(BIN)/tumorforge manifest build --layout lits $(EVIDENCE_DATA)/lits -o $(EVIDENCE_DATA)/lits-all.jsonl
	$(BIN)/tumorforge manifest split $(EVIDENCE_DATA)/lits-all.jsonl --folds 2 --seed 11 -o $(EVIDENCE_DATA)/lits.jsonl
	$(BIN)/tumorforge manifest build --layout chaos $(EVIDENCE_DATA)/chaos -o $(EVIDENCE_DATA)/chaos.jsonl
	$(BIN)/tumorforge manifest build --layout btcv $(EVIDENCE_DATA)/btcv -o $(EVIDENCE_DATA)/btcv.jsonl
	$(BIN)/tumorforge manifest merge $(EVIDENCE_DATA)/chaos.jsonl $(EVIDENCE_DATA)/btcv.jsonl $(EVIDENCE_DATA)/lits.jsonl --role healthy -o $(EVIDENCE_DATA)/healthy.jsonl
	$(BIN)/tumorforge experiment cluster/examples/experiment-evidence.yaml
