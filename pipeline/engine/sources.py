"""Image sources: where images come from, their labels and splits, and decoding them.

A source turns the ``--data`` argument into an ordered list of :class:`Record` s plus class
names, gives each record a *content key* (what tells an unchanged input from a changed one),
and decodes a record into an RGB PIL image, raising :class:`ImageDecodeError` with the reason.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import logging
import operator
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..exceptions import TRANSIENT_PREFIX, ImageDecodeError, SourceError

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
    "TRANSIENT_PREFIX",
    "WalkResult",
    "content_hash",
    "decode_image",
    "find_images",
    "is_transient",
    "open_regular_file",
    "open_source",
    "to_rgb",
    "walk_images",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# For str.endswith: for a name that is not hidden, the same test as splitext()[1] in the set.
_IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))
SPLITS = ("train", "val", "test")
BUILTIN_SOURCES = ("sklearn:digits",)

# OSError numbers whose cause is outside the file: such failures are retried on the next run.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ENOLCK,
    }
)


class Record(NamedTuple):
    """One input: its path (or stable id), label index (-1: unlabelled) and split.
    (A named tuple: a source makes one per image, a million for a large folder.)"""

    path: str
    label: int
    split: str = ""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit, 32-bit and float grey are rescaled, never
    rounded to black or clipped to white (see :func:`_grey_to_uint8`)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = _grey_to_uint8(np.asarray(image), image.mode)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _grey_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer and float grey values to 0..255.

    - 16-bit (``I;16*``, or ``I`` within 0..65535 and above 255): divided by 257;
    - ``I`` within 0..255: kept;
    - float (``F``) within 0..1: times 255;
    - anything else (negative values, 32-bit integers past 65535, floats past 1): stretched
      linearly from the image's own minimum..maximum to 0..255; such an image with one value
      only has no scale to read, and becomes mid-grey (128).
      NaN counts as the minimum, infinities as the finite extremes.
    """
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    low, high = (
        (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 0)
    )
    values = np.where(finite, values, np.where(np.isposinf(values), high, low))
    if mode.startswith("I;16") or (mode.startswith("I") and low >= 0 and 255 < high <= 65535):
        scaled = values / 257.0
    elif mode.startswith("I") and low >= 0 and high <= 255:
        scaled = values
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.full_like(values, 128.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_image(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Read an image file as an upright RGB PIL image.

    EXIF orientation is applied. With ``draft_size``, JPEGs are decoded at the smallest
    power-of-two reduction still at least that many pixels on the short side. Only regular
    files are opened (never a FIFO, socket or device, which could block).

    Raises
    ------
    ImageDecodeError
        The file is missing, empty, truncated, not an image or not a regular file, or reading
        it failed; the message names the file and says why. Failures whose cause is outside
        the file (permission denied, I/O error, out of memory) start with ``TRANSIENT_PREFIX``.
    """
    from PIL import Image, ImageOps

    try:
        with open_regular_file(path) as fh, Image.open(fh) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", _draft_box(image.size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
            return to_rgb(image)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{path}: image too large ({exc})") from exc
    except MemoryError as exc:
        raise ImageDecodeError(f"{TRANSIENT_PREFIX}{path}: MemoryError: out of memory") from exc
    except OSError as exc:
        if exc.errno in _TRANSIENT_ERRNOS:
            raise ImageDecodeError(f"{TRANSIENT_PREFIX}{path}: {_os_reason(exc)}") from exc
        raise ImageDecodeError(f"{path}: {_content_reason(path, exc)}") from exc
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{path}: {_content_reason(path, exc)}") from exc
    except Exception as exc:  # a decoder bug on one file (ZeroDivisionError, ...) is its content
        raise ImageDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc


def _content_reason(path: str | os.PathLike[str], exc: BaseException) -> str:
    if _is_empty(path):
        return "empty file"
    # PIL names the open file object it was given; name the path instead
    reason = re.sub(r"<_io\.BufferedReader name=[^>]*>", repr(os.fspath(path)), str(exc))
    return reason or type(exc).__name__


def is_transient(error: str) -> bool:
    """True for a recorded failure whose cause was outside the file: retry it next run."""
    return error.startswith(TRANSIENT_PREFIX)


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{exc.strerror or exc} ({name})"


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _not_regular(path: str | os.PathLike[str], mode: int) -> ImageDecodeError:
    return ImageDecodeError(f"{path}: not a regular file ({_file_kind(mode)})")


def open_regular_file(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` for reading only if it is a regular file (after following links).

    Checked before opening (a device is never opened) and again on the open descriptor,
    which is opened non-blocking: a file swapped for a FIFO in between cannot hang the run.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    fh = open(path, "rb", opener=_open_non_blocking)  # noqa: SIM115 (returned open)
    try:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
    except BaseException:
        fh.close()
        raise
    return fh


def _open_non_blocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


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
    """What git's index compares to notice a possible change without reading the file: size,
    modification time, status-change time and inode (see :func:`_stat_key`)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in a manifest's path
        return "missing"
    return _stat_key(info)


def _stat_key(info: os.stat_result) -> str:
    """``size:mtime_ns:ctime_ns:inode``. An edit that restores size and mtime (``cp -p``,
    ``rsync -t``, ``os.utime``) still changes ctime, and a file replaced by another one
    (``mv``) changes inode: either gives a new key. A ``chmod`` or ``touch`` does too; the
    content hash then tells whether the bytes changed (:func:`content_hash`)."""
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"


def content_hash(path: str) -> str | None:
    """The first 128 bits of the SHA-256 of a regular file's bytes, as 32 hex digits; None
    when the file cannot be read (decoding then records why)."""
    digest = hashlib.sha256()
    try:
        with open_regular_file(path) as fh:
            while block := fh.read(1 << 20):  # (hashlib.file_digest is Python 3.11+)
                digest.update(block)
    except (OSError, ValueError, ImageDecodeError):  # ValueError: a NUL byte in the path
        return None
    return digest.hexdigest()[:32]


@dataclass
class WalkResult:
    """What :func:`walk_images` found: image files in walk order, and what could not be
    listed or is not a regular file (path -> reason, same wording as decoding errors)."""

    images: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # image -> content key, from its stat


@dataclass
class _Visited:
    """Folders and files already walked, by (device, inode); files map to their first path."""

    dirs: set[tuple[int, int]] = field(default_factory=set)
    files: dict[tuple[int, int], str] = field(default_factory=dict)

    def first_visit(self, path: str, info: os.stat_result) -> bool:
        """Register a regular file; False (and a warning) when another path reached it."""
        identity = (info.st_dev, info.st_ino)
        first = self.files.setdefault(identity, path)
        if first != path:
            logger.warning("%s is the same file as %s: taken once, as the latter", path, first)
        return first == path


def walk_images(
    root: str | os.PathLike[str],
    visited: _Visited | None = None,
    ancestors: frozenset[tuple[int, int]] = frozenset(),
    into: WalkResult | None = None,
) -> WalkResult:
    """Image files under ``root``: recursive, each folder's files (sorted) before its
    sub-folders (sorted); hidden names skipped; symbolic links followed.

    Every real file and folder is visited once, whatever links lead to it: a link to an
    ancestor folder (a loop) or to a folder already walked is not followed, and a file reached
    by several paths (links, hard links) is listed once, under the first path in walk order;
    each is logged. Entries with an image extension that are not regular files (FIFO, socket,
    device), and folders or paths that cannot be read (permission denied, name too long) go to
    ``failed`` with the reason, so they can be recorded; nothing is opened here. ``visited``
    and ``ancestors`` share that bookkeeping between several walks (the class folders of one
    source); ``into``: add to this result rather than a new one.
    """
    result = into if into is not None else WalkResult()
    root = os.fspath(root)
    visited = visited if visited is not None else _Visited()
    try:
        top = os.stat(root)
    except OSError as exc:
        result.failed[root] = _walk_reason(root, exc, "cannot list folder")
        return result
    visited.dirs.add((top.st_dev, top.st_ino))
    stack = [(root, ancestors | {(top.st_dev, top.st_ino)})]
    while stack:
        stack.extend(reversed(_walk_folder(*stack.pop(), visited, result)))
    return result


def _walk_folder(
    folder: str, above: frozenset[tuple[int, int]], visited: _Visited, result: WalkResult
) -> list[tuple[str, frozenset[tuple[int, int]]]]:
    """Add the images directly in ``folder`` to ``result``; return its sub-folders to walk,
    sorted, each with its ancestors. One ``stat`` per entry: this loop runs once per image,
    so it is kept lean (a million-image folder tree is walked on every run)."""
    try:
        names = [n for n in os.listdir(folder) if not n.startswith(".")]
    except OSError as exc:
        result.failed[folder] = _walk_reason(folder, exc, "cannot list folder")
        return []
    names.sort()
    subdirs = []
    images, keys, files = result.images, result.keys, visited.files
    prefix = os.path.join(folder, "")
    for name in names:
        path = prefix + name
        is_image = name.lower().endswith(_IMAGE_SUFFIXES)
        try:
            info = os.stat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT or is_image:  # a dangling non-image link: ignored
                result.failed[path] = _walk_reason(path, exc)
            continue
        if is_image and stat.S_ISREG(info.st_mode):
            first = files.setdefault((info.st_dev, info.st_ino), path)
            if first is path or first == path:
                images.append(path)
                # _stat_key(info), inlined
                keys[path] = f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"
            else:
                logger.warning("%s is the same file as %s: taken once, as the latter", path, first)
        elif stat.S_ISDIR(info.st_mode):
            identity = (info.st_dev, info.st_ino)
            if identity in above:
                logger.warning("%s links to an ancestor folder (a loop): not followed", path)
            elif identity in visited.dirs:
                logger.warning("%s is a folder listed elsewhere: not listed again", path)
            else:
                visited.dirs.add(identity)
                subdirs.append((path, above | {identity}))
        elif is_image:
            result.failed[path] = str(_not_regular(path, info.st_mode))
    return subdirs


_name = operator.attrgetter("name")  # sort key of directory entries


def _walk_reason(path: str, exc: OSError, what: str = "cannot be read") -> str:
    prefix = TRANSIENT_PREFIX if exc.errno in _TRANSIENT_ERRNOS else ""
    return f"{prefix}{path}: {what}: {_os_reason(exc)}"


def find_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` (see :func:`walk_images`; failures are left out)."""
    return walk_images(root).images


class ImageSource:
    """Base class: ``records``, ``class_names``, ``key(record)`` and ``load(record)``."""

    records: list[Record]
    class_names: list[str]
    description: str
    # Inputs known to fail before decoding (from the folder walk): path -> reason.
    walk_failures: dict[str, str] = {}
    # Content keys taken from the walk's own stat calls (no second stat per file).
    walk_keys: dict[str, str] = {}
    # Inputs are files whose bytes :func:`content_hash` can read (False: keys are hashes).
    hashes_files = True

    def key(self, record: Record) -> str:
        known = self.walk_keys.get(record.path)
        return known if known is not None else _file_key(record.path)

    def keys(self, records: list[Record] | None = None) -> list[str]:
        """``key(r)`` of each of ``records`` (default: all); taken from the folder walk's own
        stat calls when it made them."""
        records = self.records if records is None else records
        keys = list(map(self.walk_keys.get, [r.path for r in records]))
        if None in keys:
            keys = [k if k is not None else self.key(r) for k, r in zip(keys, records, strict=True)]
        return keys

    def load(self, record: Record, draft_size: int | None = None) -> Image.Image:
        reason = self.walk_failures.get(record.path)
        if reason is not None:
            raise ImageDecodeError(reason)
        return decode_image(record.path, draft_size)


class FolderSource(ImageSource):
    """An ImageFolder tree (``root/<class>/<image>``), or ``root/{train,val,test}/<class>/``.

    Images directly under ``root`` with no class folders are taken unlabelled. When split
    folders are present, anything else at the top (class folders, images) is an error naming
    it: it would belong to no split. Files and folders the walk cannot use become records
    that fail with the reason (see :func:`walk_images`).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.path.abspath(root)
        self.description = root
        self.walk_failures, self.walk_keys = {}, {}
        subdirs, loose = self._list_top(root, root)
        split_dirs = [d for d in subdirs if d in SPLITS]
        if split_dirs:
            _check_split_layout(root, split_dirs, subdirs, loose)
        layout = [(os.path.join(root, s), s) for s in split_dirs] if split_dirs else [(root, "")]
        per_split = []
        class_names: set[str] = set()
        for folder, split in layout:
            classes, loose = self._list_top(folder, root) if split else (subdirs, loose)
            if split and loose and not classes:
                logger.warning(
                    "--data: %s holds images and no class folders: they are taken as "
                    "unlabelled %s images (if %r is a class, use a CSV manifest)",
                    folder,
                    split,
                    split,
                )
            class_names.update(classes)
            per_split.append((folder, split, classes, loose))
        self.class_names = sorted({_class_name(c) for c in class_names})
        index = {name: i for i, name in enumerate(self.class_names)}
        # One bookkeeping for the whole tree: a link from one class folder to another (or to
        # the root, or a split) is not followed; the folder is listed under its own name.
        visited = _Visited()
        tops = [root] + [f for f, s in layout if s]
        tops += [os.path.join(f, name) for f, _, classes, _ in per_split for name in classes]
        for folder in tops:
            with contextlib.suppress(OSError):
                info = os.stat(folder)
                visited.dirs.add((info.st_dev, info.st_ino))
        self.records = []
        for folder, split, classes, loose in per_split:
            above = frozenset(_identity(f) for f in {root, folder})
            for path in loose:
                try:
                    keep = path in self.walk_failures or visited.first_visit(path, os.stat(path))
                except OSError:
                    keep = True  # decoding names the reason
                if keep:
                    self.records.append(Record(path, -1, split))
            found = WalkResult(failed=self.walk_failures, keys=self.walk_keys)
            for name in classes:
                found.images = []
                walk_images(os.path.join(folder, name), visited, above, into=found)
                label = index[_class_name(name)]
                self.records += [Record(p, label, split) for p in found.images]
        if self.walk_failures:  # what could not be listed still gets a record (and fails)
            listed = {r.path for r in self.records}
            self.records += [Record(p, -1, "") for p in self.walk_failures if p not in listed]

    def _list_top(self, folder: str, root: str) -> tuple[list[str], list[str]]:
        """(visible sub-folder names, image paths) directly in ``folder``; what cannot be
        used is added to ``walk_failures``."""
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=_name)
        except OSError as exc:
            if folder == root:
                raise SourceError(f"cannot list {folder}: {_os_reason(exc)}", param="data") from exc
            self.walk_failures[folder] = _walk_reason(folder, exc, "cannot list folder")
            return [], []
        subdirs, images = [], []
        for entry in entries:
            is_image = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            try:
                mode = os.stat(entry.path).st_mode
            except OSError as exc:
                if exc.errno != errno.ENOENT or is_image:
                    self.walk_failures[entry.path] = _walk_reason(entry.path, exc)
                continue
            if stat.S_ISDIR(mode):
                subdirs.append(entry.name)
            elif is_image:
                images.append(entry.path)
                if not stat.S_ISREG(mode):
                    self.walk_failures[entry.path] = str(_not_regular(entry.path, mode))
        return subdirs, images


def _class_name(folder_name: str) -> str:
    """A class folder's name as a class name: one that is not valid UTF-8 is shown with
    backslash escapes (``caf\\xe9``), printable in reports and plots."""
    return folder_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_split_layout(
    root: str, split_dirs: list[str], subdirs: list[str], loose: list[str]
) -> None:
    """Split folders next to anything else: refuse, naming what would be left out."""
    others = [d + "/" for d in subdirs if d not in SPLITS] + [os.path.basename(p) for p in loose]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise SourceError(
            f"{root} has split folders ({', '.join(split_dirs)}) and also {shown}, "
            "which belong to no split; move them into a split folder or out of the root (if "
            f"{', '.join(split_dirs)} are classes, not splits, use a CSV manifest)",
            param="data",
        )


class CsvSource(ImageSource):
    """A CSV manifest with columns ``path,label[,split]``; relative paths are taken from the
    CSV's folder, an empty label means unlabelled.

    Paths are normalised; two rows naming one file (``img/a.jpg`` and ``./img/a.jpg``, or two
    links to it) are one input when they agree on label and split (a warning), an error naming
    both lines when they do not. A malformed CSV is a one-line error naming file and line.
    """

    def __init__(self, manifest: str | os.PathLike[str]) -> None:
        manifest = os.path.abspath(manifest)
        self.description = manifest
        self.walk_failures = {}
        base = os.path.dirname(manifest)
        text = _read_manifest_text(manifest)
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        done = [0]  # the last line of the last row read: a malformed row starts after it
        try:
            rows = self._read_rows(manifest, base, reader, done)
        except csv.Error as exc:
            raise SourceError(
                f"{manifest} line {done[0] + 1}: malformed CSV ({exc})", param="data"
            ) from None
        self.class_names = sorted({label for _, label, _ in rows if label})
        index = {name: i for i, name in enumerate(self.class_names)}
        self.records = [Record(p, index.get(label, -1), split) for p, label, split in rows]

    @staticmethod
    def _read_rows(
        manifest: str, base: str, reader: csv.DictReader, done: list[int]
    ) -> list[tuple[str, str, str]]:
        columns = [c.strip() for c in reader.fieldnames or []]
        done[0] = reader.line_num
        if "path" not in columns or "label" not in columns:
            raise SourceError(
                f"{manifest} must have a header with columns path,label[,split]; found {columns}",
                param="data",
            )
        rows: list[tuple[str, str, str]] = []
        first: dict[Any, tuple[int, str, str, str]] = {}  # identity -> (line, path, label, split)
        for row in reader:
            line, done[0] = done[0] + 1, reader.line_num
            row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            split = row.get("split", "")
            if split not in (*SPLITS, ""):
                raise SourceError(
                    f"{manifest} line {line}: split {split!r} is not one of {SPLITS}", param="data"
                )
            if not row.get("path"):
                raise SourceError(f"{manifest} line {line}: empty path", param="data")
            if "\0" in row["path"]:
                raise SourceError(f"{manifest} line {line}: path contains a NUL byte", param="data")
            path = os.path.normpath(os.path.join(base, row["path"]))
            label = row.get("label", "")
            identity = _identity(path)
            earlier = first.get(identity)
            if earlier is None:
                first[identity] = (line, row["path"], label, split)
                rows.append((path, label, split))
                continue
            if (earlier[2], earlier[3]) != (label, split):
                raise SourceError(
                    f"{manifest} lines {earlier[0]} and {line} name the same file "
                    f"({earlier[1]!r}, {row['path']!r}) with different labels or splits "
                    f"({earlier[2]!r}/{earlier[3]!r} vs {label!r}/{split!r})",
                    param="data",
                )
            logger.warning(
                "--data: %s line %d names the same file as line %d (%s); taken once",
                manifest,
                line,
                earlier[0],
                earlier[1],
            )
        return rows


def _identity(path: str) -> Any:
    """The file's (device, inode) when it exists, else its normalised path."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return path
    return (info.st_dev, info.st_ino)


def _read_manifest_text(manifest: str) -> str:
    try:
        with open(manifest, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SourceError(f"cannot read {manifest}: {_os_reason(exc)}", param="data") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            f"{manifest} line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
            "save the manifest as UTF-8",
            param="data",
        ) from None


class DigitsSource(ImageSource):
    """scikit-learn's 1,797 8x8 handwritten digits as RGB images (no files, no network)."""

    description = "sklearn:digits"
    hashes_files = False  # its keys already hash the pixels

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
            f"unknown built-in data set {text!r}; available: {', '.join(BUILTIN_SOURCES)}",
            param="data",
        )
    path = Path(text)
    if not path.exists():
        raise SourceError(f"no such file or directory: {text}", param="data")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise SourceError(f"{text} is a file but not a .csv manifest", param="data")
        source: ImageSource = CsvSource(path)
    else:
        source = FolderSource(path)
    if not source.records:
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise SourceError(f"no images ({kinds}) found in {text}", param="data")
    return source
