"""``ImageEmbedder``: images -> CNN embeddings as a stateless scikit-learn transformer.

It runs the same engine as ``python -m pipeline.extract`` (:mod:`pipeline.engine`), so its
rows equal the rows the extraction CLI stores for the same files. With
``cache="embeddings.h5"`` it keeps every embedding it computes in a small HDF5 file keyed by
*content hash* and embedding recipe (:mod:`pipeline.embedding_cache`), so a grid search over
the classifier runs the CNN once per image, not once per fold and candidate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, TransformerMixin

from ._runtime import check_backend, resolve_device, resolve_precision
from .embedding_cache import EmbeddingCache
from .engine.backbones import resolve_backbone
from .engine.runners import embed_images, make_runner
from .engine.sources import decode_image, to_rgb
from .exceptions import ImageDecodeError, PipelineError
from .recipe import DecodeOptions, EmbeddingRecipe

__all__ = ["CacheInfo", "ImageEmbedder"]

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "nan")


class CacheInfo(NamedTuple):
    """Counters of an :class:`ImageEmbedder` since it was constructed (or cloned).

    ``hits``: rows served from the cache; ``misses``: rows not found in it (always every row
    without a cache); ``forward``: images that went through the network; ``failed``: inputs
    that could not be read (NaN rows with ``on_error="nan"``).
    """

    hits: int = 0
    misses: int = 0
    forward: int = 0
    failed: int = 0


# --------------------------------------------------------------------------- inputs


class _Item(NamedTuple):
    kind: str  # "path" | "pixels"
    value: Any  # str path, or a uint8 array (H, W) / (H, W, C)
    name: str  # how messages name the input


def _as_items(X: Any) -> list[_Item]:
    """Validate ``X`` (a sequence of paths, PIL images or uint8 arrays) into items."""
    from PIL import Image

    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"ImageEmbedder: X must be a sequence of images, got the single path {str(X)!r}; "
            "wrap it in a list"
        )
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # a one-column DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"ImageEmbedder: X is a DataFrame with {X.shape[1]} columns; pass the one "
                "column that holds the images (paths, PIL images or arrays)"
            )
        X = X.iloc[:, 0]
    if isinstance(X, np.ndarray):
        if X.dtype == np.uint8 and X.ndim == 4:
            X = list(X)  # a stack of images (N, H, W, C)
        elif X.dtype.kind in "OUS" and X.ndim == 1:
            X = X.tolist()
        else:
            raise ValueError(
                f"ImageEmbedder: X is an array of shape {X.shape} and dtype {X.dtype}; expected "
                "a 1-D array of paths, or a uint8 stack of images (N, H, W, 3). Precomputed "
                "embeddings need no ImageEmbedder"
            )
    try:
        values = list(X)
    except TypeError:
        raise TypeError(
            f"ImageEmbedder: X must be a sequence of images (paths, PIL images or uint8 "
            f"arrays), got {type(X).__name__}"
        ) from None
    if not values:
        raise ValueError("ImageEmbedder: X holds 0 images; at least 1 is required")
    items = []
    for i, value in enumerate(values):
        if isinstance(value, (str, os.PathLike)):
            items.append(_Item("path", os.fspath(value), os.fspath(value)))
        elif isinstance(value, Image.Image):
            items.append(_Item("pixels", np.asarray(to_rgb(value)), f"X[{i}] (PIL image)"))
        elif isinstance(value, np.ndarray):
            ok_shape = value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4))
            if value.dtype != np.uint8 or not ok_shape:
                raise ValueError(
                    f"ImageEmbedder: X[{i}] is an array of shape {value.shape} and dtype "
                    f"{value.dtype}; expected uint8 of shape (H, W, 3), (H, W, 4) or (H, W)"
                )
            items.append(_Item("pixels", value, f"X[{i}] (array)"))
        else:
            raise TypeError(
                f"ImageEmbedder: X[{i}] is a {type(value).__name__}; expected a path (str or "
                "Path), a PIL image or a uint8 array"
            )
    return items


def _content_key(item: _Item) -> str | None:
    """sha256 of a file's bytes, or of an array's shape and pixels; None if unreadable."""
    digest = hashlib.sha256()
    if item.kind == "path":
        try:
            with open(item.value, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return None  # decoding reports the reason, naming the file
        return "file:" + digest.hexdigest()
    pixels = np.ascontiguousarray(item.value)
    digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    return "pixels:" + digest.hexdigest()


class _Loader:
    """``load(i)`` for :func:`pipeline.embedding.iter_batches`: item ``i`` as an RGB PIL image.

    Every failure becomes an :class:`ImageDecodeError` naming the input.
    """

    def __init__(self, items: Sequence[_Item]) -> None:
        self.items = list(items)

    def __call__(self, i: int) -> Any:
        from PIL import Image

        item = self.items[i]
        try:
            if item.kind == "path":
                return decode_image(item.value)
            pixels = item.value
            if pixels.ndim == 3 and pixels.shape[2] == 1:
                pixels = pixels[..., 0]
            return to_rgb(Image.fromarray(pixels))
        except ImageDecodeError:
            raise
        except Exception as exc:  # a decoder bug on one input must still name it
            raise ImageDecodeError(f"{item.name}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- cache


# --------------------------------------------------------------------------- estimator


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Images -> CNN embeddings: a stateless scikit-learn transformer.

    Each image goes through a torchvision classification model cut before its last linear
    layer (the pooled, pre-logits features), with the preprocessing of its weights: exactly
    what ``python -m pipeline.extract`` stores for the same file and settings. The network is
    built on the first :meth:`transform` that needs it and is not pickled, so a fitted
    pipeline saved with joblib stays small; it is rebuilt after loading.

    Parameters
    ----------
    model : str, default="mobilenet_v2"
        Any name from ``torchvision.models.list_models()``, or ``"timm:NAME"`` for a timm
        model (the ``pipeline[timm]`` extra; pooled pre-logits, timm's preprocessing).
    weights : str or None, default="auto"
        ``"auto"`` (:data:`pipeline.engine.backbones.AUTO_WEIGHTS`, the same table the shipped
        config's ``[extract.auto_weights]`` holds: ``IMAGENET1K_V1`` for mobilenet_v2;
        torchvision's ``DEFAULT`` for other models; no config file is read), ``"DEFAULT"``, a weights name such as
        ``"IMAGENET1K_V1"`` or ``"MobileNet_V2_Weights.IMAGENET1K_V1"``, ``None``/``"none"``
        for seeded random initialisation, or a checkpoint file (``.pth``, ``.pt``,
        ``.pth.tar``, ``.safetensors``: a state dict, or a dict holding one; a classifier head
        of another shape is dropped), as ``pipeline.extract --weights``.
    batch_size : int, default=32
        Images per forward pass.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : str, default="auto"
        ``"auto"`` (fp32 on CPU, bf16/fp16 on GPU), ``"fp32"``, ``"bf16"``, ``"fp16"`` or
        ``"int8"`` (on the CPU, with the quantised graph ``int8_graph``).
    backend : str, default="auto"
        ``"auto"``, ``"torch"`` or ``"onnxruntime"``, as ``pipeline.extract --backend``
        (ONNX Runtime only where its output matches torch's).
    cache : str, Path or None, default=None
        An HDF5 file that keeps every embedding computed, keyed by the sha256 of the file's
        bytes (paths) or of the pixels and shape (arrays, PIL images) and by the backbone
        fingerprint; inputs seen before cost no forward pass. A file made by another model,
        weights, preprocessing or precision raises
        :class:`~pipeline.exceptions.CacheMismatchError`.
    on_error : {"raise", "nan"}, default="raise"
        What an unreadable image does: ``"raise"`` an
        :class:`~pipeline.exceptions.ImageDecodeError` naming the file; ``"nan"`` fill its
        row with NaN (rows are never dropped, so they stay aligned with ``y``), log a warning
        and list it in ``last_errors_``. With a ``cache``, ``"raise"`` first embeds and
        caches the readable images, then raises; without one it stops at the first failure.
    workers : int, default=0
        Decoding workers: threads when the network runs on the CPU, DataLoader processes
        on a GPU (0: decode in the calling thread).
    crop_mode : {"center", "squash", "border"}, default="center"
        How an image is fitted to the crop, as ``pipeline.extract --crop-mode``: ``center``
        is the weights' preset, ``squash`` resizes the whole image, ``border`` pads it to a
        square first. A model file's ``backbone["crop_mode"]`` says which one it was fitted on.
    views : sequence of str or str, default=()
        Augmented views embedded besides the plain one (``("flip",)`` or ``"flip"``).
        :meth:`transform` then returns the *mean* embedding over the plain view and these:
        a transformer cannot average a later classifier's probabilities, and the mean
        embedding is the test-time augmentation every downstream estimator receives alike,
        in fit and in predict. The cache keeps those means (its recipe names the views).
    preprocess : str, dict or None, default=None
        As ``pipeline.extract --preprocess``: None for the weights' own preprocessing (the
        architecture's default weights' for a checkpoint file; timm's for a timm model), a
        preset name (``"IMAGENET1K_V1"``), or values (``{"resize": 256, "crop": 224, "mean":
        [...], "std": [...], "interpolation": "bicubic"}`` or the same as a string,
        ``"resize=256 crop=224"``). Part of the recipe (fingerprint).
    int8_graph : str or None, default=None
        For ``precision="int8"``: the sha256 of the quantised graph, as a store made by
        ``pipeline.extract --precision int8`` records it (``read_attrs(store)["int8_graph"]``,
        a model file's ``backbone["int8_graph"]``), so the rows match that store's.

    Attributes
    ----------
    last_errors_ : list of (int, str)
        Set by :meth:`transform`: ``(row, message)`` for every input of the last call that
        could not be read (empty when all were read).

    See Also
    --------
    pipeline.extract : the CLI that embeds a whole data set into an HDF5 store.

    Notes
    -----
    Stateless: :meth:`fit` only validates the parameters (and the cache file's provenance),
    and :meth:`transform` may be called without it (the ``requires_fit=False`` tag).
    ``n_features_in_`` is not set because the input is not tabular. Feature names are
    ``f"{model}_{i}"``. :meth:`cache_info` counts cache hits and forward passes.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import ImageEmbedder
    >>> images = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    >>> embedder = ImageEmbedder(model="mobilenet_v3_small", weights=None, backend="torch")
    >>> X = embedder.fit_transform(images)
    >>> X.shape, X.dtype
    ((3, 1024), dtype('float32'))
    >>> embedder.get_feature_names_out()[:2].tolist()
    ['mobilenet_v3_small_0', 'mobilenet_v3_small_1']

    In a pipeline, on image paths:

    >>> from sklearn.pipeline import make_pipeline
    >>> from pipeline import make_classifier
    >>> pipe = make_pipeline(ImageEmbedder(cache="embeddings.h5"), make_classifier("svc"))
    >>> pipe.fit(train_paths, train_labels).predict(test_paths)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "mobilenet_v2",
        weights: str | None = "auto",
        batch_size: int = 32,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        cache: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        workers: int = 0,
        crop_mode: str = "center",
        views: Sequence[str] | str = (),
        preprocess: str | dict[str, Any] | None = None,
        int8_graph: str | None = None,
    ) -> None:
        self.model = model
        self.weights = weights
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.backend = backend
        self.cache = cache
        self.on_error = on_error
        self.workers = workers
        self.crop_mode = crop_mode
        self.views = views
        self.preprocess = preprocess
        self.int8_graph = int8_graph

    # ----------------------------------------------------------------- sklearn plumbing

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # stateless: transform works without fit
        tags.input_tags.two_d_array = False  # a sequence of images, not a feature matrix
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True  # paths
        tags.transformer_tags.preserves_dtype = []  # always float32 out
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing is learnt

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_runner", None)  # the network: rebuilt lazily after unpickling
        state.pop("_runner_key", None)
        return state

    def _check_params(self) -> tuple[Any, Any, str]:
        """Validate every parameter; return the resolved (spec, device, precision)."""

        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            low = 1 if name == "batch_size" else 0
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"ImageEmbedder: {name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"ImageEmbedder: {name} must be >= {low}, got {value}")
        if self.on_error not in ON_ERROR:
            raise ValueError(
                f"ImageEmbedder: on_error={self.on_error!r} is not one of {', '.join(ON_ERROR)}"
            )
        if self.cache is not None and not isinstance(self.cache, (str, os.PathLike)):
            raise TypeError(
                f"ImageEmbedder: cache must be None or a file path, got {type(self.cache).__name__}"
            )
        if not isinstance(self.model, str):
            raise TypeError(f"ImageEmbedder: model must be a str, got {type(self.model).__name__}")
        self._options()
        try:
            check_backend(self.backend)
            spec = resolve_backbone(self.model, self.weights, preprocess=self.preprocess)
            device = resolve_device(self.device)
            precision = resolve_precision(self.precision, device)
        except PipelineError as exc:  # a ValueError naming the parameter ("device: ...")
            raise type(exc)(f"ImageEmbedder: {exc}") from exc
        if (precision == "int8") != bool(self.int8_graph):
            raise ValueError(
                "ImageEmbedder: int8_graph (the sha256 a store made with `pipeline.extract "
                "--precision int8` records) goes with precision='int8', and only with it"
            )
        return spec, device, precision

    def _options(self) -> DecodeOptions:
        """``crop_mode`` and ``views`` as recipe options (ValueError naming a bad one)."""
        try:
            return DecodeOptions(crop_mode=self.crop_mode, views=self.views)
        except PipelineError as exc:
            raise ValueError(f"ImageEmbedder: {exc.param}: {exc.message}") from exc

    def _cache(self, spec: Any, precision: str) -> EmbeddingCache | None:
        if self.cache is None:
            return None
        return EmbeddingCache(self.cache, self._recipe(spec, precision))

    def _recipe(self, spec: Any, precision: str) -> EmbeddingRecipe:
        return EmbeddingRecipe(spec, precision, self._options(), self.int8_graph or "")

    def fit(self, X: Any = None, y: Any = None) -> ImageEmbedder:
        """Validate the parameters (and the cache file's provenance); learn nothing.

        Parameters
        ----------
        X : sequence of images, optional
            Ignored (accepted for the scikit-learn API).
        y : None
            Ignored.

        Returns
        -------
        self : ImageEmbedder
        """
        spec, _, precision = self._check_params()
        cache = self._cache(spec, precision)
        if cache is not None:
            cache.check()
        return self

    # ----------------------------------------------------------------- embedding

    def _get_runner(self, spec: Any, device: Any, precision: str) -> Any:
        """Build the network on first use; rebuild when a parameter changed since."""

        key = (spec, str(device), precision, self.backend, self.int8_graph)
        if getattr(self, "_runner", None) is None or getattr(self, "_runner_key", None) != key:
            started = time.perf_counter()
            self._runner = make_runner(
                spec, device, precision, self.backend, int8_graph=self.int8_graph or ""
            )
            self._runner_key = key
            logger.info(
                "ImageEmbedder: built %s (%s, %s, %s backend) in %.1f s",
                spec.model,
                spec.weights or "random init",
                precision,
                self._runner.backend,
                time.perf_counter() - started,
            )
        known = (spec.model, spec.weights, spec.preprocess)
        self._feature_dim = (known, int(self._runner.feature_dim))
        return self._runner

    def _embed(
        self, items: list[_Item], spec: Any, device: Any, precision: str, fail_fast: bool
    ) -> tuple[np.ndarray, list[str]]:
        """Run the network over ``items``; NaN rows and messages for unreadable ones."""

        runner = self._get_runner(spec, device, precision)
        recipe = self._recipe(spec, precision)
        try:
            features, errors = embed_images(
                _Loader(items),
                len(items),
                recipe.preprocessing,
                runner,
                batch_size=int(self.batch_size),
                workers=int(self.workers),
                on_error="raise" if fail_fast else "nan",
                views=recipe.views,
            )
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{exc}{_HINT}") from exc
        return (features.mean(axis=0) if recipe.views else features), errors

    def transform(self, X: Any) -> NDArray[np.float32]:
        """Embed images.

        Parameters
        ----------
        X : sequence of str, Path, PIL.Image.Image or ndarray
            Image files, PIL images, or uint8 arrays of shape (H, W, 3) (also (H, W, 4) and
            (H, W)); a uint8 array of shape (N, H, W, 3) is N images. A one-column DataFrame
            or a 1-D array of paths works too.

        Returns
        -------
        ndarray of shape (n_images, n_features), dtype float32
            Row ``i`` embeds ``X[i]``; rows of unreadable images are NaN when
            ``on_error="nan"``.

        Raises
        ------
        ImageDecodeError
            An image cannot be read and ``on_error="raise"``; the message names it.
        CacheMismatchError
            ``cache`` was made by another backbone, weights, preprocessing or precision.
        """
        started = time.perf_counter()
        spec, device, precision = self._check_params()
        items = _as_items(X)
        cache = self._cache(spec, precision)
        rows, groups, keys = self._group_by_content(items, cache, spec)
        todo = list(groups)
        errors: dict[int, str] = {}
        n_forward = 0
        if todo:
            fail_fast = self.on_error == "raise" and cache is None
            embedded, messages = self._embed(
                [items[i] for i in todo], spec, device, precision, fail_fast
            )
            n_forward = sum(1 for m in messages if not m)
            for j, i in enumerate(todo):
                for row in groups[i]:
                    rows[row] = embedded[j]
                    if messages[j]:
                        errors[row] = messages[j]
            good = [j for j, m in enumerate(messages) if not m]
            if cache is not None and good:
                cache.add([keys[todo[j]] for j in good], embedded[good])
        out = np.stack(rows).astype(np.float32, copy=False)
        n_hits = len(items) - sum(len(g) for g in groups.values()) if cache is not None else 0
        self._record(len(items), n_hits, n_forward, errors, started)
        return out

    def _group_by_content(
        self, items: list[_Item], cache: EmbeddingCache | None, spec: Any
    ) -> tuple[list[np.ndarray | None], dict[int, list[int]], list[str | None]]:
        """(rows, groups, keys): rows the cache already holds; ``groups`` maps the first row
        of each distinct uncached content to every row with that content (one forward pass
        each); ``keys`` the content keys (empty without a cache)."""
        rows: list[np.ndarray | None] = [None] * len(items)
        if cache is None:
            return rows, {i: [i] for i in range(len(items))}, []
        keys = [_content_key(item) for item in items]
        found = cache.lookup([k for k in keys if k is not None])
        groups: dict[int, list[int]] = {}
        first_of: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None and key in found:
                rows[i] = found[key]
            elif key is None:
                groups[i] = [i]
            elif key in first_of:
                groups[first_of[key]].append(i)
            else:
                first_of[key] = i
                groups[i] = [i]
        if found:
            dim = int(next(iter(found.values())).shape[0])
            self._feature_dim = ((spec.model, spec.weights, spec.preprocess), dim)
        return rows, groups, keys

    def _record(
        self, n: int, n_hits: int, n_forward: int, errors: dict[int, str], started: float
    ) -> None:
        """Update ``last_errors_`` and the counters, log, and apply ``on_error``."""
        stats = getattr(self, "_stats", CacheInfo())
        self.last_errors_ = sorted(errors.items())
        self._stats = CacheInfo(
            hits=stats.hits + n_hits,
            misses=stats.misses + (n - n_hits),
            forward=stats.forward + n_forward,
            failed=stats.failed + len(errors),
        )
        seconds = time.perf_counter() - started
        logger.info(
            "ImageEmbedder: %d images (%d from cache, %d embedded, %d failed) in %.1f s "
            "(%.1f images/s)",
            n,
            n_hits,
            n - n_hits,
            len(errors),
            seconds,
            n / seconds if seconds > 0 else 0.0,
        )
        if not errors:
            return
        first_row, first = self.last_errors_[0]
        if self.on_error == "raise":
            raise ImageDecodeError(
                f"{first}{_HINT}"
                + (f" ({len(errors) - 1} more unreadable)" if len(errors) > 1 else "")
            )
        logger.warning(
            "ImageEmbedder: %d of %d images could not be read; their rows are NaN "
            "(see last_errors_); first: row %d: %s",
            len(errors),
            n,
            first_row,
            first,
        )

    def cache_info(self) -> CacheInfo:
        """Counters since construction: cache ``hits`` and ``misses``, images run through the
        network (``forward``), and unreadable inputs (``failed``)."""
        return getattr(self, "_stats", CacheInfo())

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        """Output feature names ``f"{model}_{i}"``; builds the network if its size is unknown.

        Parameters
        ----------
        input_features : None
            Ignored: the input is images, not features.

        Returns
        -------
        ndarray of str, shape (n_features,)
        """
        spec, device, precision = self._check_params()
        known_spec, dim = getattr(self, "_feature_dim", (None, None))
        if known_spec != (spec.model, spec.weights, spec.preprocess):
            dim = self._get_runner(spec, device, precision).feature_dim
        return np.asarray([f"{self.model}_{i}" for i in range(int(dim))], dtype=object)


_HINT = " (ImageEmbedder: pass on_error='nan' to get NaN rows for unreadable images instead)"
