#!/usr/bin/env bash
# Packages the lent GPU machine lacks (../shared/device-notes.md), gathered into .carry/site for the
# device tool's `carry` (64 MiB limit): pydantic (+ core, annotated-types, typing-inspection), soundfile
# (+ cffi, pycparser), threadpoolctl, efficientnet-lite-pytorch (architecture code only), and
# pycocoevalcap's BLEU and CIDEr scorers (the full wheel is 104 MB of Java jars we do not use).
# Wheels for CPython 3.12 manylinux x86_64 from PyPI. Then on the device:
#   PYTHONPATH=.carry/site bash benchmarks/gpu_smoke.sh --device cuda     (gpu_smoke adds it itself)
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=.carry/site
rm -rf .carry && mkdir -p "$SITE"
grep -qx ".carry/" .git/info/exclude 2>/dev/null || echo ".carry/" >> .git/info/exclude
ver() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
PKGS=(
  "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic-core)" "annotated-types==$(ver annotated-types)"
  "typing-inspection==$(ver typing-inspection)" "soundfile==$(ver soundfile)" "cffi" "pycparser"
  "threadpoolctl==$(ver threadpoolctl)" "efficientnet-lite-pytorch==$(ver efficientnet-lite-pytorch)"
)
python -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: --target "$SITE" \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "${PKGS[@]}"
COCO=$(python -c "import pycocoevalcap, os; print(os.path.dirname(pycocoevalcap.__file__) if pycocoevalcap.__file__ else list(pycocoevalcap.__path__)[0])")
mkdir -p "$SITE/pycocoevalcap"
touch "$SITE/pycocoevalcap/__init__.py"
for part in bleu cider; do
  mkdir -p "$SITE/pycocoevalcap/$part" && cp "$COCO/$part"/*.py "$SITE/pycocoevalcap/$part/"
done
du -sh .carry | awk '{print "device_carry: " $1 " in .carry (carry: [\".carry\"])"}'
