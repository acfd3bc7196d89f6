"""Parallel decoding: image -> uint8 crop, in order, in batches, without stopping on bad files.

Two engines, chosen by where inference runs:

- **threads** (CPU inference): PIL decodes and resamples with the GIL released, so threads
  decode in parallel with no process start-up, no pickling of pixels and no torch import;
- **processes** (GPU inference): a torch ``DataLoader`` with worker processes and pinned
  memory, so a many-core GPU machine decodes on all its cores.

Both yield :class:`Batch` objects of uint8 (N, H, W, 3) crops (see
:class:`pipeline.preprocess.Preprocessing`); an item that fails to decode becomes an error
string and a zero image, never an exception.

:func:`iter_device_batches` is the ``--gpu-decode`` option: workers only read JPEG files, and
``torchvision.io.decode_jpeg(..., device=...)`` decodes each batch at once on the GPU (nvJPEG),
where it is resized and cropped too. Other files, and JPEGs it cannot decode, take the PIL path.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..exceptions import TRANSIENT_PREFIX, ImageDecodeError
from .preprocess import Preprocessing
from .sources import open_regular_file

__all__ = ["Batch", "decode_batches", "iter_batches", "iter_device_batches"]

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclasses.dataclass
class Batch:
    """Decoded inputs: ``images[j]`` is input ``indices[j]`` when ``errors[j]`` is empty.

    ``images`` is uint8 (N, H, W, 3): a numpy array from threads, a torch tensor from processes.
    """

    images: Any
    indices: list[int]
    errors: list[str]


class _CropItem:
    """``i -> (crop, error)``: decode item ``i`` with ``load`` and crop it; picklable."""

    def __init__(self, load: Callable[[int], Any], preprocessing: Preprocessing) -> None:
        self.load, self.preprocessing = load, preprocessing
        size = preprocessing.crop_size
        self.blank = np.zeros((size, size, 3), dtype=np.uint8)

    def __call__(self, i: int) -> tuple[np.ndarray, str]:
        try:
            return self.preprocessing.crop(self.load(i)), ""
        except ImageDecodeError as exc:
            return self.blank, str(exc)
        except MemoryError:  # not the file's fault: retried on the next run
            return self.blank, f"{TRANSIENT_PREFIX}MemoryError: out of memory"
        except Exception as exc:  # a decoder bug on one file must not end the run
            return self.blank, f"{type(exc).__name__}: {exc or 'no message'}"


def iter_batches(
    load: Callable[[int], Any],
    n: int,
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    workers: int,
    processes: bool = False,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decode items ``0..n-1`` (``load(i) -> RGB PIL image``) with ``workers`` threads, or
    processes when ``processes``; ``workers=0`` decodes in the calling thread."""
    crop = _CropItem(load, preprocessing)
    if processes and workers > 0:
        yield from _process_batches(crop, n, batch_size, workers, pin_memory)
    else:
        yield from _thread_batches(crop, n, batch_size, workers)


def decode_batches(
    load: Callable[[int], Any],
    n: int,
    preprocessing: Preprocessing,
    device: Any,
    *,
    batch_size: int,
    workers: int,
    paths: Sequence[str | None] | None = None,
) -> Iterator[Batch]:
    """The engine for inference on ``device``: threads for the CPU, pinned processes for a
    GPU, and with ``paths`` (``--gpu-decode``) JPEG batches decoded on ``device`` itself."""
    if paths is not None:
        return iter_device_batches(
            load, paths, preprocessing, device, batch_size=batch_size, workers=workers
        )
    on_gpu = str(device).startswith("cuda")
    return iter_batches(
        load,
        n,
        preprocessing,
        batch_size=batch_size,
        workers=workers,
        processes=on_gpu,
        pin_memory=on_gpu,
    )


def _collect(items: list[tuple[np.ndarray, str]], start: int) -> Batch:
    images = np.stack([pixels for pixels, _ in items])
    return Batch(images, list(range(start, start + len(items))), [e for _, e in items])


def _thread_batches(crop: _CropItem, n: int, batch_size: int, workers: int) -> Iterator[Batch]:
    if workers <= 0:
        for start in range(0, n, batch_size):
            yield _collect([crop(i) for i in range(start, min(n, start + batch_size))], start)
        return
    # Keep four batches in flight ahead of the consumer: enough to hide decoding behind
    # inference, bounded so memory does not grow with the number of images.
    ahead = 4 * batch_size + workers
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque[Future[tuple[np.ndarray, str]]] = collections.deque()
        submitted, items, start = 0, [], 0
        try:
            while submitted < n or pending:
                while submitted < n and len(pending) < ahead:
                    pending.append(pool.submit(crop, submitted))
                    submitted += 1
                items.append(pending.popleft().result())
                if len(items) == batch_size or (submitted == n and not pending):
                    yield _collect(items, start)
                    start += len(items)
                    items = []
        finally:
            for future in pending:
                future.cancel()


class _ItemDataset:
    """A map-style dataset (what ``DataLoader`` needs) over a picklable ``item(i)``."""

    def __init__(self, item: Callable[[int], Any], n: int) -> None:
        self.item, self.n = item, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.item(i)


def _data_loader(
    item: Callable[[int], Any], n: int, batch_size: int, workers: int, **options: Any
) -> Any:
    import torch

    return torch.utils.data.DataLoader(
        _ItemDataset(item, n),
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=4,
        shuffle=False,
        **options,
    )


class _IndexedCrop:
    """``i -> (contiguous crop, i, error)``, for DataLoader's default collate."""

    def __init__(self, crop: _CropItem) -> None:
        self.crop = crop

    def __call__(self, i: int) -> tuple[np.ndarray, int, str]:
        pixels, error = self.crop(i)
        return np.ascontiguousarray(pixels), i, error


def _process_batches(
    crop: _CropItem, n: int, batch_size: int, workers: int, pin_memory: bool
) -> Iterator[Batch]:
    loader = _data_loader(_IndexedCrop(crop), n, batch_size, workers, pin_memory=pin_memory)
    for images, indices, errors in loader:
        yield Batch(images, [int(i) for i in indices], list(errors))


class _EncodedItem:
    """``i -> (JPEG bytes or None, crop or None, error)``: a JPEG file is only read; anything
    else is decoded and cropped here (:class:`_CropItem`). Picklable."""

    def __init__(self, paths: Sequence[str | None], crop: _CropItem) -> None:
        self.paths, self.crop = list(paths), crop

    def __call__(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        path = self.paths[i]
        if path is not None:
            try:
                with open_regular_file(path) as fh:  # never a FIFO or device
                    data = fh.read()
            except (OSError, ImageDecodeError):
                data = b""  # the PIL path names the file and the reason
            if data[:3] == _JPEG_MAGIC:
                return np.frombuffer(bytearray(data), dtype=np.uint8), None, ""
        pixels, error = self.crop(i)
        return None, np.ascontiguousarray(pixels), error


def _columns(items: list[tuple[Any, ...]]) -> list[list[Any]]:
    """DataLoader collate: a batch of tuples -> a list per field, nothing stacked."""
    return [list(column) for column in zip(*items, strict=True)]


def iter_device_batches(
    load: Callable[[int], Any],
    paths: Sequence[str | None],
    preprocessing: Preprocessing,
    device: Any,
    *,
    batch_size: int,
    workers: int,
) -> Iterator[Batch]:
    """Like :func:`iter_batches`, but JPEG files (``paths[i]``) are decoded on ``device`` in
    batches by ``torchvision.io.decode_jpeg`` and cropped there; ``images`` stay on ``device``."""

    crop = _CropItem(load, preprocessing)
    item = _EncodedItem(paths, crop)
    n = len(paths)
    if workers > 0:
        chunks: Any = _data_loader(item, n, batch_size, workers, collate_fn=_columns)
    else:
        chunks = (
            _columns([item(i) for i in range(s, min(n, s + batch_size))])
            for s in range(0, n, batch_size)
        )
    start = 0
    for encoded, crops, errors in chunks:
        yield _decode_on_device(encoded, crops, errors, start, crop, device)
        start += len(errors)


def _decode_on_device(
    encoded: list[Any],
    crops: list[Any],
    errors: list[str],
    start: int,
    crop: _CropItem,
    device: Any,
) -> Batch:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    pre, n = crop.preprocessing, len(errors)
    images = torch.zeros((n, pre.crop_size, pre.crop_size, 3), dtype=torch.uint8, device=device)
    errors = list(errors)
    jpegs = [j for j in range(n) if encoded[j] is not None]

    def decode(data: list[Any]) -> list[Any]:
        return decode_jpeg(
            [torch.from_numpy(d) for d in data],
            mode=ImageReadMode.RGB,
            device=device,
            apply_exif_orientation=True,
        )

    if jpegs:
        try:
            decoded: list[Any] = decode([encoded[j] for j in jpegs])
        except RuntimeError:  # one bad file fails the batch: find it, one image at a time
            decoded = []
            for j in jpegs:
                try:
                    decoded.extend(decode([encoded[j]]))
                except RuntimeError:
                    decoded.append(None)
        for j, image in zip(jpegs, decoded, strict=True):
            if image is None:  # what nvJPEG cannot decode (CMYK, broken files): PIL decides
                pixels, errors[j] = crop(start + j)
                crops[j] = np.ascontiguousarray(pixels)
            else:
                try:
                    images[j] = pre.crop_tensor(image)
                except ImageDecodeError as exc:
                    errors[j] = str(exc)
    for j in range(n):
        if crops[j] is not None and not errors[j]:
            images[j] = torch.from_numpy(crops[j]).to(device)
    return Batch(images, list(range(start, start + n)), errors)
