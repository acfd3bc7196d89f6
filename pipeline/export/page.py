"""The offline page of an exported model: a folder whose ``index.html`` classifies images in
the browser with ONNX Runtime Web, from disk (``file://``) or any static host, network off.

The model and the WebAssembly runtime are written as base64 inside ``.js`` files loaded by
``<script>`` tags: a page opened from disk may not ``fetch()`` files beside it (Chromium blocks
it), but it may run scripts. The runtime is one-threaded (threads need cross-origin isolation,
which a ``file://`` page cannot have). ONNX Runtime Web itself is package data fetched by
``.ci/fetch-ort-web.sh`` (npm ``onnxruntime-web``, pinned, integrity-checked).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from pathlib import Path

from .._io import atomic_path
from ..exceptions import ConfigError, ModelFileError

__all__ = ["ORT_WEB_DIR", "RUNTIME_FILES", "write_page"]

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")
ORT_WEB_DIR = WEB_DIR / "ort"
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
FETCH_COMMAND = "bash .ci/fetch-ort-web.sh"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
TOP_K = 5
# The longest string V8 (Chromium, Node) holds is 2**29 - 24 characters: the model's base64
# must fit in one.
MAX_BASE64_CHARS = 2**29 - 24


def _runtime_files() -> dict[str, Path]:
    """The vendored ONNX Runtime Web files, or a one-line error naming the command to fetch them."""
    files = {name: ORT_WEB_DIR / name for name in RUNTIME_FILES}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise ConfigError(
            f"ONNX Runtime Web is not installed ({ORT_WEB_DIR / missing[0]} is missing); "
            f"run `{FETCH_COMMAND}` in the pipeline checkout (and rebuild an installed wheel)",
            param="page",
        )
    return files


def _model_info(model_file: Path) -> dict:
    """Check the model's interface and read its class names and title from the metadata."""
    import onnx
    from onnx import TensorProto

    try:
        proto = onnx.load_model(str(model_file), load_external_data=False)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{model_file} does not exist", param="model") from exc
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ModelFileError(f"{model_file} is not an ONNX model ({exc})", param="model") from exc
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    image = inputs.get(INPUT_NAME)
    if image is None or image.elem_type != TensorProto.UINT8 or len(image.shape.dim) != 4:
        raise ModelFileError(
            f"{model_file} has no input {INPUT_NAME!r} of uint8 pixels [N, H, W, 3] "
            f"(inputs: {', '.join(inputs) or 'none'}); export it with `pipeline export`",
            param="model",
        )
    if OUTPUT_NAME not in outputs:
        raise ModelFileError(
            f"{model_file} has no output {OUTPUT_NAME!r} (outputs: {', '.join(sorted(outputs))})",
            param="model",
        )
    metadata = {p.key: p.value for p in proto.metadata_props}
    try:
        names = json.loads(metadata["class_names"])
        if not (isinstance(names, list) and names):
            raise ValueError("not a non-empty list")
    except (KeyError, ValueError) as exc:
        raise ModelFileError(
            f"{model_file} lacks the metadata class_names (a JSON list of the class names: {exc})",
            param="model",
        ) from exc
    title = metadata.get("title") or model_file.stem
    return {
        "title": f"Image classifier: {title}",
        "classNames": [str(name) for name in names],
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "topK": TOP_K,
        "fingerprint": metadata.get("fingerprint", ""),
    }


def _script(variable: str, value: dict) -> bytes:
    """``globalThis.<variable> = <JSON>;``: data a ``<script>`` tag can load from disk."""
    return f"globalThis.{variable} = {json.dumps(value, ensure_ascii=True)};\n".encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_page(model_file: Path, out_dir: Path) -> Path:
    """Write the offline page of an exported ONNX model into ``out_dir``.

    Parameters
    ----------
    model_file : Path
        An ONNX model with input ``image`` (uint8 RGB ``[N, H, W, 3]``), output
        ``probabilities`` ``[N, C]`` and the metadata ``class_names`` (a JSON list of C names),
        as ``pipeline export`` writes it.
    out_dir : Path
        The folder to write (created if missing; the page's own files in it are replaced):
        ``index.html``, ``page.js``, ``model.js`` (the model, base64) and ``ort/`` (ONNX Runtime
        Web: ``ort.wasm.min.js`` and ``ort-wasm.js``, its WebAssembly binary and loader, base64).

    Returns
    -------
    Path
        ``out_dir / "index.html"``.

    Raises
    ------
    ModelFileError
        The model is missing, not ONNX, lacks the input, output or class names above.
    ConfigError
        ONNX Runtime Web is not installed with the package (``bash .ci/fetch-ort-web.sh``).
    """
    model_file, out_dir = Path(model_file), Path(out_dir)
    runtime = _runtime_files()
    info = _model_info(model_file)
    size = model_file.stat().st_size
    if 4 * ((size + 2) // 3) > MAX_BASE64_CHARS:
        raise ModelFileError(
            f"{model_file} is too large for the page ({size / 2**20:.0f} MiB; a browser holds at "
            f"most {MAX_BASE64_CHARS * 3 // 4 // 2**20} MiB of model in one base64 string)",
            param="model",
        )
    model_bytes = model_file.read_bytes()
    info["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    info["bytes"] = _b64(model_bytes)
    wasm = {
        "version": (ORT_WEB_DIR / "VERSION").read_text().strip()
        if (ORT_WEB_DIR / "VERSION").is_file()
        else "",
        "wasm": _b64(runtime["ort-wasm-simd-threaded.wasm"].read_bytes()),
        "loader": _b64(runtime["ort-wasm-simd-threaded.mjs"].read_bytes()),
    }
    contents: dict[str, bytes | Path] = {
        "ort/ort.wasm.min.js": runtime["ort.wasm.min.js"],
        "ort/ort-wasm.js": _script("PIPELINE_ORT_WASM", wasm),
        "model.js": _script("PIPELINE_MODEL", info),
        "page.js": WEB_DIR / "page.js",
        "index.html": WEB_DIR / "index.html",  # last: a page is complete once it is there
    }
    for relative, content in contents.items():
        with atomic_path(out_dir / relative) as tmp:
            if isinstance(content, Path):
                with open(content, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                tmp.write_bytes(content)
    logger.info(
        "wrote the offline page %s (model %.1f MB, %d classes)",
        out_dir / "index.html",
        len(model_bytes) / 1e6,
        len(info["classNames"]),
    )
    return out_dir / "index.html"
