#!/usr/bin/env bash
# The standalone ONNX example (docs/examples/onnx_predict.py) in a virtualenv with only
# onnxruntime, numpy and Pillow (pinned by constraints.txt; no torch, torchvision,
# scikit-learn or xgboost): its labels must equal `pipeline predict`'s on a few generated
# images, for a tiny model (random-init squeezenet1_1, logreg) trained and exported here.
# Usage: bash .ci/onnx-example.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$REPO/.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS
export PIPELINE_CACHE_DIR="$tmp/cache"

"$PY" - "$tmp/data" <<'PY'  # 3 colour-coded classes, two image sizes
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 8), ("test", 2)):
    for c, name in enumerate(("red", "green", "blue")):
        folder = Path(sys.argv[1]) / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            size = (48, 36) if i % 2 else (32, 32)
            pixels = rng.integers(0, 70, (*size[::-1], 3))
            pixels[..., c] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i}.png")
PY
"$PY" -m pipeline extract --data "$tmp/data" --out "$tmp/f.h5" --model squeezenet1_1 --weights none --no-progress -q
"$PY" -m pipeline fit --features "$tmp/f.h5" --clf logreg --out "$tmp/run" --no-audit -q >/dev/null
"$PY" -m pipeline export --model "$tmp/run/models/logreg.joblib" --out "$tmp/model.onnx" --images 8 -q
"$PY" -m pipeline predict --model "$tmp/run/models/logreg.joblib" "$tmp/data/test" --out "$tmp/predict.csv" -q

"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt onnxruntime numpy pillow
(cd "$tmp" && env -u PYTHONPATH "$tmp/venv/bin/python" -c "
import importlib.util as u
present = [m for m in ('torch', 'torchvision', 'sklearn', 'xgboost', 'pipeline') if u.find_spec(m)]
assert not present, f'the example venv has {present}'")
(cd "$tmp" && env -u PYTHONPATH "$tmp/venv/bin/python" "$REPO/docs/examples/onnx_predict.py" model.onnx $(find data/test -name '*.png' | sort)) > "$tmp/example.csv"

"$PY" - "$tmp" <<'PY'
import csv, sys
from pathlib import Path
tmp = Path(sys.argv[1])
expected = {Path(r["path"]).name: r["prediction"] for r in csv.DictReader(open(tmp / "predict.csv"))}
got = {Path(r["path"]).name: r["prediction"] for r in csv.DictReader(open(tmp / "example.csv"))}
assert len(got) == len(expected) == 6, (got, expected)
assert got == expected, f"example {got} != predict {expected}"
print(f"example labels equal predict's on {len(got)} images")
PY
echo "onnx example check passed in $((SECONDS - started)) s"
