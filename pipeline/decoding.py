"""Parallel decoding: image -> uint8 crop, in order, in batches, without stopping on bad files.

Two engines, chosen by where inference runs:

- **threads** (CPU inference): PIL decodes and resamples with the GIL released, so threads
  decode in parallel with no process start-up, no pickling of pixels and no torch import;
- **processes** (GPU inference): a torch ``DataLoader`` with worker processes and pinned
  memory, so a many-core GPU machine decodes on all its cores.

Both yield :class:`Batch` objects of uint8 (N, H, W, 3) crops (see
:class:`pipeline.preprocess.Preprocessing`); an item that fails to decode becomes an error
string and a zero image, never an exception.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .exceptions import ImageDecodeError
from .preprocess import Preprocessing

__all__ = ["Batch", "iter_batches"]


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
        except Exception as exc:  # a decoder bug on one file must not end the run
            return self.blank, f"{type(exc).__name__}: {exc}"


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


class _CropDataset:
    """A map-style dataset (what ``DataLoader`` needs) over :class:`_CropItem`; picklable."""

    def __init__(self, crop: _CropItem, n: int) -> None:
        self.crop, self.n = crop, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, str]:
        pixels, error = self.crop(i)
        return np.ascontiguousarray(pixels), i, error


def _process_batches(
    crop: _CropItem, n: int, batch_size: int, workers: int, pin_memory: bool
) -> Iterator[Batch]:
    import torch

    loader = torch.utils.data.DataLoader(
        _CropDataset(crop, n),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4,
        shuffle=False,
    )
    for images, indices, errors in loader:
        yield Batch(images, [int(i) for i in indices], list(errors))
