"""Image sources: where images come from, their labels and splits, and decoding them.

A source turns the ``--data`` argument into an ordered list of :class:`Record` s plus class
names, gives each record a *content key* (what tells an unchanged input from a changed one),
and decodes a record into an RGB PIL image, raising :class:`ImageDecodeError` with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..exceptions import ImageDecodeError, SourceError

if TYPE_CHECKING:  # PIL is imported where images are decoded: listing files needs none
    from PIL import Image

__all__ = [
    "BUILTIN_SOURCES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "CsvSource",
    "DigitsSource",
    "FolderSource",
    "ImageSource",
    "Record",
    "decode_image",
    "find_images",
    "open_source",
    "to_rgb",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
BUILTIN_SOURCES = ("sklearn:digits",)


@dataclass(frozen=True)
class Record:
    """One input: its path (or stable id), label index (-1: unlabelled) and split."""

    path: str
    label: int
    split: str = ""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and 32-bit grey are rescaled, not clipped."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image)
        if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
            array = array.astype(np.float64) / 257.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Read an image file as an upright RGB PIL image.

    EXIF orientation is applied. With ``draft_size``, JPEGs are decoded at the smallest
    power-of-two reduction still at least that many pixels on the short side.

    Raises
    ------
    ImageDecodeError
        The file is missing, empty, truncated or not an image; the message says which.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", _draft_box(image.size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{path}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = "empty file" if _is_empty(path) else str(exc) or type(exc).__name__
        raise ImageDecodeError(f"{path}: {reason}") from exc


def _draft_box(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    width, height = size
    scale = short_side / max(1, min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _is_empty(path: str | os.PathLike[str]) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _file_key(path: str) -> str:
    """Size and modification time: a changed file gets a new key without being read."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def find_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` (recursive, sorted, hidden files skipped)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(folder, name))
    return found


class ImageSource:
    """Base class: ``records``, ``class_names``, ``key(record)`` and ``load(record)``."""

    records: list[Record]
    class_names: list[str]
    description: str

    def key(self, record: Record) -> str:
        return _file_key(record.path)

    def keys(self) -> list[str]:
        return [self.key(r) for r in self.records]

    def load(self, record: Record, draft_size: int | None = None) -> Image.Image:
        return decode_image(record.path, draft_size)


class FolderSource(ImageSource):
    """An ImageFolder tree (``root/<class>/<image>``), or ``root/{train,val,test}/<class>/``.

    Images directly under ``root`` with no class folders are taken unlabelled.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.path.abspath(root)
        self.description = root
        subdirs = sorted(
            d
            for d in os.listdir(root)
            if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
        )
        split_dirs = [d for d in subdirs if d in SPLITS]
        layout = [(os.path.join(root, s), s) for s in split_dirs] if split_dirs else [(root, "")]
        per_split = []
        class_names: set[str] = set()
        for folder, split in layout:
            classes = sorted(
                d
                for d in os.listdir(folder)
                if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
            )
            class_names.update(classes)
            loose = [
                os.path.join(folder, f)
                for f in sorted(os.listdir(folder))
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith(".")
            ]
            per_split.append((folder, split, classes, loose))
        self.class_names = sorted(class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        self.records = []
        for folder, split, classes, loose in per_split:
            self.records += [Record(p, -1, split) for p in loose]
            for name in classes:
                self.records += [
                    Record(p, index[name], split) for p in find_images(os.path.join(folder, name))
                ]


class CsvSource(ImageSource):
    """A CSV manifest with columns ``path,label[,split]``; relative paths are taken from the
    CSV's folder, an empty label means unlabelled."""

    def __init__(self, manifest: str | os.PathLike[str]) -> None:
        manifest = os.path.abspath(manifest)
        self.description = manifest
        base = os.path.dirname(manifest)
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise SourceError(
                    f"--data: {manifest} must have a header with columns path,label[,split]; "
                    f"found {columns}"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                split = row.get("split", "")
                if split not in (*SPLITS, ""):
                    raise SourceError(
                        f"--data: {manifest} line {line}: split {split!r} is not one of {SPLITS}"
                    )
                if not row["path"]:
                    raise SourceError(f"--data: {manifest} line {line}: empty path")
                rows.append((os.path.join(base, row["path"]), row["label"], split))
        self.class_names = sorted({label for _, label, _ in rows if label})
        index = {name: i for i, name in enumerate(self.class_names)}
        self.records = [Record(p, index.get(label, -1), split) for p, label, split in rows]


class DigitsSource(ImageSource):
    """scikit-learn's 1,797 8x8 handwritten digits as RGB images (no files, no network)."""

    description = "sklearn:digits"

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self._images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.class_names = [str(name) for name in digits.target_names]
        self.records = [
            Record(f"sklearn:digits/{i:04d}", int(t), "") for i, t in enumerate(digits.target)
        ]

    def _index(self, record: Record) -> int:
        return int(record.path.rsplit("/", 1)[1])

    def key(self, record: Record) -> str:
        return hashlib.sha1(self._images[self._index(record)].tobytes()).hexdigest()

    def load(self, record: Record, draft_size: int | None = None) -> Image.Image:
        from PIL import Image

        return Image.fromarray(self._images[self._index(record)], mode="L").convert("RGB")


def open_source(data: str | os.PathLike[str]) -> ImageSource:
    """Resolve ``--data`` into a source, with a one-line error when it cannot be used."""
    text = str(data)
    if text.startswith("sklearn:"):
        if text == "sklearn:digits":
            return DigitsSource()
        raise SourceError(
            f"--data: unknown built-in data set {text!r}; available: {', '.join(BUILTIN_SOURCES)}"
        )
    path = Path(text)
    if not path.exists():
        raise SourceError(f"--data: no such file or directory: {text}")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise SourceError(f"--data: {text} is a file but not a .csv manifest")
        source: ImageSource = CsvSource(path)
    else:
        source = FolderSource(path)
    if not source.records:
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise SourceError(f"--data: no images ({kinds}) found in {text}")
    return source
