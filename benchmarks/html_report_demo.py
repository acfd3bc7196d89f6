"""Run ``fit`` on a feature store, summarise what its ``report.html`` shows, time it;
optionally screenshot the report.

``pipeline.fit.run_fit`` writes ``report.html`` (with ``predictions.csv``,
``label_issues.csv`` and ``duplicates.csv``); this script reads those files back and prints the
counts and the time the run took.

    python -m pipeline.extract --data ../shared/data/cifar10-mini --out /tmp/cifar.h5
    python benchmarks/html_report_demo.py --features /tmp/cifar.h5 --out /tmp/cifar-run \
        --clf logreg,svc --screenshot docs/report.png

``--synthetic`` instead times the report alone on made-up predictions (``--classes`` classes,
``--rows`` test rows per classifier, two classifiers, a few hundred tiny image files).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import FitConfig  # noqa: E402
from pipeline.fit import run_fit  # noqa: E402
from pipeline.fit.html_report import write_html_report  # noqa: E402


def screenshot(html: Path, png: Path, width: int = 1280) -> None:
    """Headless Chromium views of the report's top, its gallery and its label issues, stacked
    into one PNG (256-colour palette, to stay small)."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    views = []
    try:
        for fragment, height in (("", 820), ("errors", 560), ("label-issues", 560)):
            driver.get(html.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
            time.sleep(0.5)
            image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            views.append(image.crop((0, 0, image.width, min(height, image.height))))
    finally:
        driver.quit()
    sheet = Image.new("RGB", (views[0].width, sum(v.height for v in views) + 8 * 2), "#888")
    top = 0
    for view in views:
        sheet.paste(view, (0, top))
        top += view.height + 8
    sheet = sheet.resize((sheet.width * 3 // 4, sheet.height * 3 // 4), Image.Resampling.LANCZOS)
    sheet.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(png, optimize=True)


def real_run(args: argparse.Namespace) -> None:
    import pandas as pd

    out = Path(args.out)
    config = FitConfig.from_file(
        None, features=args.features, clf=args.clf, out=str(out), seed=args.seed
    )
    started = time.perf_counter()
    report = run_fit(config)
    seconds = time.perf_counter() - started
    predictions = pd.read_csv(out / report["predictions"])
    issues = pd.read_csv(out / "label_issues.csv")
    duplicates = pd.read_csv(out / "duplicates.csv")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    errors = {clf: int((group["correct"] == 0).sum()) for clf, group in predictions.groupby("clf")}
    print(
        json.dumps(
            {
                "report": str(out / "report.html"),
                "misclassified": errors,
                "n_test": report["n_test"],
                "label_issues": len(issues),
                "label_issues_by_split": issues["split"].value_counts().to_dict(),
                "duplicates": duplicates["kind"].value_counts().to_dict(),
                "fit_seconds_incl_audit_and_report": round(seconds, 2),
            }
        )
    )
    if args.screenshot:
        screenshot(out / "report.html", Path(args.screenshot))


def synthetic_run(args: argparse.Namespace) -> None:
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    images = out.parent / (out.name + "-images")
    images.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(300):
        path = images / f"img_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    k, n = args.classes, args.rows
    names = np.asarray([f"class_{i:04d}" for i in range(k)], dtype=object)
    label = rng.integers(0, k, n)
    results, frames = [], []
    for clf, acc in (("logreg", 0.8), ("svc", 0.75)):
        wrong = rng.random(n) > acc
        pred = np.where(wrong, rng.integers(0, k, n), label)
        frames.append(
            pd.DataFrame(
                {
                    "path": np.asarray(files, dtype=object)[rng.integers(0, len(files), n)],
                    "split": "test",
                    "label": names[label],
                    "clf": clf,
                    "pred": names[pred],
                    "confidence": rng.random(n),
                    "correct": pred == label,
                }
            )
        )
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (label, pred), 1)
        from sklearn.metrics import precision_recall_fscore_support

        p, r, f, s = precision_recall_fscore_support(label, pred, labels=range(k), zero_division=0)
        results.append(
            {
                "clf": clf,
                "accuracy": float((pred == label).mean()),
                "balanced_accuracy": float(r.mean()),
                "macro_f1": float(f.mean()),
                "fit_seconds": 1.0,
                "predict_seconds": 0.1,
                "per_class": {
                    names[i]: {
                        "precision": p[i],
                        "recall": r[i],
                        "f1": f[i],
                        "support": int(s[i]),
                    }
                    for i in range(k)
                },
                "confusion_matrix": cm.tolist(),
            }
        )
    report = {
        "features": "synthetic",
        "fingerprint": "-",
        "n_train": n,
        "n_test": n,
        "evaluation": "given split",
        "class_names": names.tolist(),
        "backbone": {},
        "results": results,
    }
    predictions = pd.concat(frames, ignore_index=True)
    issues = predictions[predictions.clf == "logreg"].head(5000).copy()
    issues = issues.rename(columns={"pred": "predicted"})
    issues["p_label"], issues["p_predicted"] = 0.01, 0.9
    issues.insert(0, "rank", np.arange(1, len(issues) + 1))
    started = time.perf_counter()
    path = write_html_report(out, report=report, predictions=predictions, label_issues=issues)
    seconds = time.perf_counter() - started
    thumbs = sum(f.stat().st_size for f in (out / "thumbs").iterdir())
    print(
        json.dumps(
            {
                "classes": k,
                "rows_per_clf": n,
                "seconds": round(seconds, 2),
                "report_html_bytes": path.stat().st_size,
                "thumbs_bytes": thumbs,
                "confusion_csv_bytes": (out / "confusion_logreg.csv").stat().st_size,
            }
        )
    )
    if args.screenshot:
        screenshot(path, Path(args.screenshot))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", help="feature store (real run)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--clf", default="logreg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshot", help="PNG to write (headless Chromium)")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.synthetic:
        synthetic_run(args)
    else:
        real_run(args)


if __name__ == "__main__":
    main()
