#!/usr/bin/env bash
# Install check: build a wheel of the working tree, install it non-editable into a fresh
# virtualenv apart from the checkout (reusing the pinned packages of .venv through a .pth file,
# so nothing is downloaded), then, from a folder outside the checkout, run the console command:
# `pipeline extract` on the built-in default data and `pipeline fit --clf logreg` on its store.
# Usage: bash .ci/wheel-check.sh   (PIPELINE_BASE_VENV=/path/to/venv to reuse another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BASE=${PIPELINE_BASE_VENV:-$REPO/.venv}
unset PYTHONPATH
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS

# Build from a copy of the tracked and untracked-but-not-ignored files: no build/ or egg-info
# left in the checkout, and no stray ignored file in the wheel.
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tmp/src"
# ONNX Runtime Web is git-ignored package data (.ci/fetch-ort-web.sh): it travels when present.
ORT_WEB=pipeline/export/web/ort
if [ -d "$ORT_WEB" ]; then
  mkdir -p "$tmp/src/$ORT_WEB" && cp "$ORT_WEB"/* "$tmp/src/$ORT_WEB/"
fi
"$BASE/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/src"
wheel=$(ls "$tmp"/dist/pipeline-*.whl)
"$BASE/bin/python" - "$wheel" "$ORT_WEB" <<'PY'  # the package data must be in the wheel
import os, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
data = ["pipeline/default.toml", "pipeline/fit/templates/report.html.j2"]
data += ["pipeline/export/web/index.html", "pipeline/export/web/page.js"]
if os.path.isdir(sys.argv[2]):  # fetched: the offline page's runtime too
    data += [f"{sys.argv[2]}/{name}" for name in os.listdir(sys.argv[2])]
for name in data:
    assert name in names, f"{sys.argv[1]} lacks {name}"
PY

"$BASE/bin/python" -m venv --without-pip "$tmp/venv"
site=$("$tmp/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
base_site=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$base_site" > "$site/_pipeline_base_packages.pth"  # the pinned dependencies, not its pipeline
"$BASE/bin/python" -m pip --python "$tmp/venv/bin/python" install -q --no-deps "$wheel"

mkdir "$tmp/work" && cd "$tmp/work"
export PIPELINE_CACHE_DIR="$tmp/cache"
"$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import sys
import pipeline
assert pipeline.__file__.startswith(sys.argv[1]), f"pipeline imported from {pipeline.__file__}"
print(f"pipeline {pipeline.__version__} from {pipeline.__file__}")
PY
"$tmp/venv/bin/pipeline" --version
"$tmp/venv/bin/python" -m pipeline.fit --version
"$tmp/venv/bin/pipeline" extract --out out/features.h5 --no-progress
"$tmp/venv/bin/pipeline" fit --features out/features.h5 --clf logreg --out out/run
test -s out/run/report.json && test -s out/run/models/logreg.joblib
if [ -d "$REPO/$ORT_WEB" ]; then  # the offline page from the installed package data
  "$tmp/venv/bin/python" - <<'PY'
import json, onnx
from onnx import TensorProto, helper as h
from pipeline.export.page import write_page
graph = h.make_graph(
    [h.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
     h.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
     h.make_node("Softmax", ["m"], ["probabilities"], axis=1)],
    "tiny", [h.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
    [h.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])])
model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
h.set_model_props(model, {"class_names": json.dumps(["r", "g", "b"])})
onnx.save(model, "tiny.onnx")
index = write_page("tiny.onnx", "page")
assert all((index.parent / f).stat().st_size for f in ("model.js", "ort/ort-wasm.js", "page.js"))
print(f"offline page written: {index}")
PY
fi
echo "wheel check passed in $((SECONDS - started)) s"
