"""scikit-learn compatible classifiers for embeddings: the torch MLP head and XGBoost.

They are built by name through :mod:`pipeline.classifiers` (``make_classifier``).

Every classifier here is a real scikit-learn estimator (parameters stored untouched in
``__init__``, validation in ``fit``, fitted state ending in ``_``), so ``clone``, ``Pipeline``,
``GridSearchCV`` and ``cross_val_score`` work, and each predicts the original labels, whatever
their type.
"""

from __future__ import annotations

import copy
import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ._runtime import auto_device, resolve_device
from .exceptions import ConfigError
from .rows import BLOCK_ROWS, ArrayRows, RowSource, iter_blocks, materialize

__all__ = ["TorchMLPClassifier", "XGBoostClassifier"]

logger = logging.getLogger(__name__)

_PREDICT_BATCH = 8192
_VAL = "validation_0"  # XGBClassifier.fit's name for its first eval set
#: About how many rows the ``nn`` head trains on per block (rounded down to whole minibatches,
#: at least one): the most of a :class:`~pipeline.rows.RowSource` it holds at once besides
#: early stopping's validation rows. Tests shrink it.
TRAIN_BLOCK_ROWS = BLOCK_ROWS


def _resolve_device(device: Any, owner: str) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a torch device, with clear errors."""
    if not isinstance(device, str):
        raise TypeError(
            f"{owner}: device must be a str such as 'auto', 'cpu' or 'cuda', got {device!r}"
        )
    try:
        return resolve_device(device)
    except ConfigError as exc:  # "device: ..." for an estimator parameter
        raise ConfigError(f"{owner}: {exc}") from exc


def _check_at_least_two_classes(classes: np.ndarray, owner: str) -> None:
    if len(classes) < 2:
        raise ValueError(
            f"{owner} needs samples of at least 2 classes in the data, but the data contains "
            f"only 1 class: {classes[0]!r}"
        )


def _check_finite(rows: np.ndarray, owner: str, what: str) -> None:
    """Refuse NaN and infinity, checking ``BLOCK_ROWS`` rows at a time (no full-size mask)."""
    for start in range(0, len(rows), BLOCK_ROWS):
        if not np.isfinite(rows[start : start + BLOCK_ROWS]).all():
            raise ValueError(f"{owner}: Input X contains NaN or infinity ({what})")


class _DeviceBlocks:
    """Rows ``start:stop`` of the training rows as float32 tensors on ``device``.

    An in-memory array goes to the device once (on CPU a view sharing its memory, no copy)
    and a block is a slice of it, or a gather on the device when ``positions`` (early
    stopping's training rows) select rows. A row source is read one block at a time, each
    block checked for NaN and infinity on its first read; a source that is one block is read
    once for the whole fit."""

    def __init__(
        self,
        X: np.ndarray | RowSource,
        positions: np.ndarray | None,
        device: torch.device,
        owner: str,
    ) -> None:
        self.device, self.owner = device, owner
        self._source: RowSource | None = None
        self._whole = self._positions = self._single = None
        self._checked: set[int] = set()
        if isinstance(X, RowSource):
            self._source = X if positions is None else X.subset(positions)
        else:
            self._whole = torch.from_numpy(np.ascontiguousarray(X)).to(device)
            if positions is not None:
                self._positions = torch.from_numpy(positions).to(device)

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._whole is not None:
            if self._positions is None:
                return self._whole[start:stop]
            return self._whole[self._positions[start:stop]]
        if self._single is not None:
            return self._single
        rows = self._source.read(start, stop)
        if start not in self._checked:
            _check_finite(rows, self.owner, f"training rows {start}:{stop}")
            self._checked.add(start)
        block = torch.from_numpy(rows).to(self.device)
        if start == 0 and stop == len(self._source):
            self._single = block
        return block


class TorchMLPClassifier(ClassifierMixin, BaseEstimator):
    """A torch MLP head (Linear - ReLU - Dropout - Linear) as a scikit-learn classifier.

    Meant for fixed embeddings from a pretrained CNN: fast to train, with early stopping,
    dropout and weight decay. Parameter names follow :class:`sklearn.neural_network.MLPClassifier`.

    ``X`` may be an array or a :class:`~pipeline.rows.RowSource` (a store's rows): training
    reads it in blocks of about ``TRAIN_BLOCK_ROWS`` rows, never whole, and an array and a
    source holding the same rows give the same model.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(256,)
        Width of each hidden layer; each is followed by ReLU and Dropout.
        An empty tuple gives a linear (softmax regression) head.
    dropout : float, default=0.2
        Dropout probability after each hidden layer, in [0, 1).
    alpha : float, default=1e-4
        L2 penalty (weight decay of the Adam optimizer).
    batch_size : int or "auto", default="auto"
        Minibatch size; ``"auto"`` is ``min(200, n_samples)``.
    learning_rate_init : float, default=1e-3
        Adam learning rate.
    max_iter : int, default=200
        Maximum number of epochs.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified) and stop when its
        loss stops improving; the best weights are kept.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    n_iter_no_change : int, default=10
        Epochs without an improvement of at least ``tol`` before training stops.
    tol : float, default=1e-4
        Minimum loss improvement that counts.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, dropout and the validation split through a
        local ``torch.Generator``; global random state is never touched.
    verbose : int, default=0
        Log the loss of each epoch (at INFO level) when positive.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes
    ----------
    module_ : torch.nn.Sequential
        The trained network, in eval mode; it outputs logits.
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of input features.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    validation_loss_curve_ : list of float or None
        Validation loss of each epoch when ``early_stopping``.
    best_loss_ : float
        Best training loss, or best validation loss with ``early_stopping``.
    n_iter_ : int
        Epochs run.
    device_ : torch.device
        The device trained on.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import TorchMLPClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(-2, 1, (20, 4)), rng.normal(2, 1, (20, 4))]
    >>> y = np.array(["cat"] * 20 + ["dog"] * 20)
    >>> clf = TorchMLPClassifier(max_iter=50, random_state=0, device="cpu").fit(X, y)
    >>> clf.predict(X[:2]).tolist()
    ['cat', 'cat']
    >>> clf.predict_proba(X[:1]).shape
    (1, 2)
    """

    #: ``fit`` (and ``predict_proba``) take a :class:`~pipeline.rows.RowSource` and read it
    #: one block at a time.
    accepts_row_source = True
    #: ``predict`` is ``classes_[argmax(predict_proba)]`` (see
    #: :func:`pipeline.fit.streaming.predicts_argmax_proba`).
    predict_is_argmax_proba = True

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (256,),
        *,
        dropout: float = 0.2,
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        max_iter: int = 200,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        device: str = "auto",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    # -- validation -------------------------------------------------------------------------

    def _validate_params_explicitly(self) -> tuple[int, ...]:
        name = type(self).__name__
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(
                f"{name}: hidden_layer_sizes must be a tuple of ints, got {self.hidden_layer_sizes!r}"
            ) from None
        if not all(isinstance(s, numbers.Integral) and s > 0 for s in sizes):
            raise ValueError(
                f"{name}: hidden_layer_sizes must hold positive ints, got {self.hidden_layer_sizes!r}"
            )

        def check(param: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"{name}: {param} must be {expected}, got {getattr(self, param)!r}"
                )

        def is_real(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        check("dropout", is_real(self.dropout) and 0 <= self.dropout < 1, "a float in [0, 1)")
        check("alpha", is_real(self.alpha) and self.alpha >= 0, "a float >= 0")
        check(
            "batch_size",
            self.batch_size == "auto" or (is_int(self.batch_size) and self.batch_size >= 1),
            "'auto' or an int >= 1",
        )
        check(
            "learning_rate_init",
            is_real(self.learning_rate_init) and self.learning_rate_init > 0,
            "a float > 0",
        )
        check("max_iter", is_int(self.max_iter) and self.max_iter >= 1, "an int >= 1")
        check("early_stopping", isinstance(self.early_stopping, bool | np.bool_), "a bool")
        check(
            "validation_fraction",
            is_real(self.validation_fraction) and 0 < self.validation_fraction < 1,
            "a float in (0, 1)",
        )
        check(
            "n_iter_no_change",
            is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1,
            "an int >= 1",
        )
        check("tol", is_real(self.tol) and self.tol >= 0, "a float >= 0")
        check("verbose", is_int(self.verbose) or isinstance(self.verbose, bool), "an int")
        return tuple(int(s) for s in sizes)

    # -- fitting ----------------------------------------------------------------------------

    def _build_module(
        self, n_features: int, n_classes: int, sizes: tuple[int, ...], gen: torch.Generator
    ) -> torch.nn.Sequential:
        # skip_init: no draw from the global generator (torch's own init would make one).
        def linear(n_in: int, n_out: int) -> torch.nn.Linear:
            return torch.nn.utils.skip_init(torch.nn.Linear, n_in, n_out)

        layers: list[torch.nn.Module] = []
        width = n_features
        for size in sizes:
            layers += [linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(self.dropout)]
            width = size
        layers.append(linear(width, n_classes))
        module = torch.nn.Sequential(*layers)
        # torch's default Linear initialisation (uniform within 1/sqrt(fan_in)), drawn from the
        # local generator, so fitting never changes, nor depends on, global random state.
        with torch.no_grad():
            for layer in module:
                if isinstance(layer, torch.nn.Linear):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)
        return module

    @staticmethod
    def _forward_train(
        module: torch.nn.Sequential, x: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Forward pass in training mode, with dropout masks drawn from ``gen``."""
        for layer in module:
            if isinstance(layer, torch.nn.Dropout):
                if layer.p > 0:
                    keep = torch.empty_like(x).bernoulli_(1.0 - layer.p, generator=gen)
                    x = x * keep / (1.0 - layer.p)
            else:
                x = layer(x)
        return x

    def fit(self, X: ArrayLike | RowSource, y: ArrayLike) -> TorchMLPClassifier:
        """Train the head on ``X`` (n_samples, n_features) and labels ``y``.

        ``X`` may be a :class:`~pipeline.rows.RowSource` (e.g. a store's rows), which is read
        one block at a time, never whole: an array and a source holding the same rows give the
        same model (see :meth:`_train_epoch` for the schedule).

        Parameters
        ----------
        X : array-like or RowSource of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Class labels of any type (str, int, ...).

        Returns
        -------
        self : TorchMLPClassifier
            The fitted classifier.
        """
        sizes = self._validate_params_explicitly()
        X, y = self._check_fit_data(X, y)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        _check_at_least_two_classes(self.classes_, type(self).__name__)
        y_enc = encoder.transform(y).astype(np.int64)
        self.device_ = _resolve_device(self.device, type(self).__name__)

        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        cpu_gen = torch.Generator().manual_seed(seed)
        dev_gen = torch.Generator(device=self.device_).manual_seed(seed + 1)

        train_positions, val = None, None
        if self.early_stopping:
            train_positions, val_positions = self._validation_split(y_enc, seed)
            val = (self._validation_rows(X, val_positions), self._tensor(y_enc[val_positions]))
            y_enc = y_enc[train_positions]

        module = self._build_module(X.shape[1], len(self.classes_), sizes, cpu_gen).to(self.device_)
        module.train()
        blocks = _DeviceBlocks(X, train_positions, self.device_, type(self).__name__)
        best, best_state = self._run_epochs(
            module, (blocks, self._tensor(y_enc)), val, cpu_gen, dev_gen
        )
        if best_state is not None:
            module.load_state_dict(best_state)
        self.best_loss_ = float(best)
        self.module_ = module.eval()
        return self

    def _check_fit_data(
        self, X: ArrayLike | RowSource, y: ArrayLike
    ) -> tuple[np.ndarray | RowSource, np.ndarray]:
        """``X`` as a float32 array (sklearn's validation) or as the source it is (checked by
        shape only: reading it here would materialise it), and ``y`` as a 1-D array."""
        if isinstance(X, ArrayRows):
            X = X.array  # an in-memory array: validated as one
        if not isinstance(X, RowSource):
            return validate_data(self, X, y, dtype=np.float32)
        name = type(self).__name__
        n_rows, n_features = X.shape
        if n_rows < 1 or n_features < 1:
            raise ValueError(
                f"{name}: found a row source of shape {X.shape}; at least 1 row and 1 feature "
                "are required"
            )
        y = column_or_1d(y, warn=True)
        if len(y) != n_rows:
            raise ValueError(f"{name}: X has {n_rows} rows but y has {len(y)} labels")
        self.n_features_in_ = int(n_features)
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return X, y

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device_)

    def _validation_rows(self, X: np.ndarray | RowSource, positions: np.ndarray) -> torch.Tensor:
        """The held-out rows as one matrix (a small share of the data), read (and scaled, by a
        :class:`~pipeline.rows.TransformedRows`) and checked a block at a time."""
        if not isinstance(X, RowSource):
            return self._tensor(X[positions])
        rows = X.take(positions)
        _check_finite(rows, type(self).__name__, "the validation rows")
        return self._tensor(rows)

    def _run_epochs(
        self,
        module: torch.nn.Module,
        train: tuple[_DeviceBlocks, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor] | None,
        cpu_gen: torch.Generator,
        dev_gen: torch.Generator,
    ) -> tuple[float, dict[str, Any] | None]:
        """Adam epochs until ``max_iter`` or ``n_iter_no_change`` epochs without improvement of
        the validation loss (``val``) or else the training loss; returns (best, best state)."""
        n_samples = len(train[1])
        batch = min(200, n_samples) if self.batch_size == "auto" else int(self.batch_size)
        batch = max(1, min(batch, n_samples))
        optimizer = torch.optim.Adam(
            module.parameters(), lr=self.learning_rate_init, weight_decay=self.alpha
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        self.loss_curve_: list[float] = []
        self.validation_loss_curve_: list[float] | None = [] if val is not None else None
        best, best_state, no_improve = np.inf, None, 0
        self.n_iter_ = 0
        for epoch in range(int(self.max_iter)):
            epoch_loss = self._train_epoch(
                module, optimizer, loss_fn, train, batch, (cpu_gen, dev_gen)
            )
            self.loss_curve_.append(epoch_loss)
            self.n_iter_ = epoch + 1
            score = epoch_loss if val is None else self._validation_loss(module, val, loss_fn)
            if self.verbose:
                extra = f", validation loss = {score:.6f}" if val is not None else ""
                logger.info("Iteration %d, loss = %.6f%s", self.n_iter_, epoch_loss, extra)
            no_improve = no_improve + 1 if score > best - self.tol else 0
            if score < best:
                best = score
                if val is not None:
                    best_state = copy.deepcopy(module.state_dict())
            if no_improve >= self.n_iter_no_change:
                logger.debug(
                    "%s: no improvement of %g for %d epochs; stopping at epoch %d",
                    type(self).__name__,
                    self.tol,
                    self.n_iter_no_change,
                    self.n_iter_,
                )
                break
        return best, best_state

    def _train_epoch(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any,
        train: tuple[_DeviceBlocks, torch.Tensor],
        batch: int,
        gens: tuple[torch.Generator, torch.Generator],
    ) -> float:
        """One epoch, block-shuffled: the training rows are cut into blocks of ``batch`` times
        ``TRAIN_BLOCK_ROWS // batch`` rows; the blocks are visited in a random order, each read
        once, and each block's rows are shuffled into minibatches. With one block (small data)
        this is a full shuffle of the rows. Every draw comes from ``gens`` and depends only on
        the row count, so an array and a row source holding the same rows train alike.
        Returns the mean training loss."""
        blocks, yt = train
        cpu_gen, dev_gen = gens
        n_samples = len(yt)
        block_rows = max(1, TRAIN_BLOCK_ROWS // batch) * batch
        starts = list(range(0, n_samples, block_rows))
        if len(starts) > 1:
            starts = [starts[i] for i in torch.randperm(len(starts), generator=cpu_gen).tolist()]
        # float64 on the device: the same sum as Python floats, without a sync per minibatch
        total = torch.zeros((), dtype=torch.float64, device=self.device_)
        for start in starts:
            stop = min(start + block_rows, n_samples)
            xb, yb = blocks.read(start, stop), yt[start:stop]
            order = torch.randperm(stop - start, generator=cpu_gen).to(self.device_)
            for first in range(0, stop - start, batch):
                idx = order[first : first + batch]
                loss = loss_fn(self._forward_train(module, xb[idx], dev_gen), yb[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach().double() * len(idx)
            del xb  # the next block is read without this one alive
        return float(total) / n_samples

    def _validation_loss(
        self, module: torch.nn.Module, val: tuple[torch.Tensor, torch.Tensor], loss_fn: Any
    ) -> float:
        module.eval()
        with torch.inference_mode():
            score = float(loss_fn(module(val[0]), val[1]))
        module.train()
        self.validation_loss_curve_.append(score)
        return score

    def _validation_split(self, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (train, validation) positions: a seeded split, stratified when it can be."""
        n_val = int(np.ceil(self.validation_fraction * len(y)))
        if n_val < 1 or len(y) - n_val < 1:
            raise ValueError(
                f"{type(self).__name__}: {len(y)} samples are too few for early_stopping with "
                f"validation_fraction={self.validation_fraction}; set early_stopping=False"
            )
        positions = np.arange(len(y))
        try:
            train, val = train_test_split(
                positions, test_size=self.validation_fraction, random_state=seed, stratify=y
            )
        except ValueError:  # some class too small to stratify: plain random split
            train, val = train_test_split(
                positions, test_size=self.validation_fraction, random_state=seed
            )
        return np.sort(train), np.sort(val)

    # -- prediction -------------------------------------------------------------------------

    def _logits(self, X: ArrayLike | RowSource) -> np.ndarray:
        """Logits in float64, row by row independent of the batch: in float32, matrix
        products are blocked differently for different numbers of rows, so a row's logits
        changed (by ~1e-8) with the rows predicted beside it. A float64 copy of the head (it is
        small) keeps such differences below 1e-15, on CPU and GPU alike."""
        check_is_fitted(self)
        if isinstance(X, RowSource):
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
        else:
            X = validate_data(self, X, dtype=np.float32, reset=False)
        module = copy.deepcopy(self.module_).double().eval()
        device = next(module.parameters()).device
        out = []
        with torch.inference_mode():
            for _, block in iter_blocks(X, _PREDICT_BATCH):
                chunk = torch.from_numpy(block.astype(np.float64))
                out.append(module(chunk.to(device)).cpu().numpy())
        if not out:
            return np.empty((0, len(self.classes_)), dtype=np.float64)
        return np.concatenate(out)

    def predict_proba(self, X: ArrayLike | RowSource) -> NDArray[np.float64]:
        """Class probabilities (softmax of the logits); each row sums to 1.

        Parameters
        ----------
        X : array-like or RowSource of shape (n_samples, n_features)
            A row source is read block by block.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``.
        """
        logits = self._logits(X)
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def predict_log_proba(self, X: ArrayLike | RowSource) -> NDArray[np.float64]:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: ArrayLike | RowSource) -> np.ndarray:
        """Predicted class labels, ``classes_[argmax(predict_proba(X))]``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # -- pickling and tags ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        module = state.get("module_")
        if module is not None and next(module.parameters()).device.type != "cpu":
            # Pickle a CPU copy so that a model trained on a GPU loads on any machine.
            state["module_"] = copy.deepcopy(module).cpu()
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        device = self.device if isinstance(self.device, str) else ""
        tags.non_deterministic = device.startswith("cuda") or (
            device == "auto" and torch.cuda.is_available()
        )
        return tags


class XGBoostClassifier(ClassifierMixin, BaseEstimator):
    """``xgboost.XGBClassifier`` that accepts any labels and stops early on a held-out share.

    XGBoost takes only labels ``0..K-1``: this wrapper encodes labels on ``fit`` and decodes
    predictions, so it predicts the original labels (str, int, ...).

    Parameters
    ----------
    n_estimators : int, default=300
        Maximum number of boosting rounds.
    learning_rate : float, default=0.2
    max_depth : int, default=3
    subsample : float, default=0.8
    colsample_bytree : float, default=0.2
    reg_lambda : float, default=1.0
    early_stopping_rounds : int or None, default=20
        Stop when the log loss on a held-out ``validation_fraction`` of the training data has
        not improved for this many rounds; None trains all ``n_estimators`` on all the data.
    validation_fraction : float, default=0.1
    tree_method : str, default="hist"
    device : str, default="auto"
        ``"auto"`` is ``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``.
    n_jobs : int or None, default=None
    random_state : int or None, default=None
    xgb_params : dict or None, default=None
        Any other ``XGBClassifier`` keyword arguments.

    Attributes
    ----------
    estimator_ : xgboost.XGBClassifier
        The fitted booster (trained on encoded labels).
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    best_iteration_ : int or None
        Best round when early stopping ran.
    device_ : str

    Notes
    -----
    ``fit`` takes an array or a :class:`~pipeline.rows.RowSource` (``accepts_row_source``). Both
    go the same way: with ``hist`` trees the training rows are read
    :data:`pipeline._xgb_rows.BLOCK_ROWS` (8192) at a time through an ``xgboost.DataIter`` into
    a ``QuantileDMatrix`` (bin indices, not floats), so the float matrix is never held whole
    (an array is only viewed, or copied a block at a time for the early-stopping split); the
    held-out early-stopping rows are read into memory. The booster is trained by
    ``xgboost.train`` with the parameters ``XGBClassifier.fit`` would use and loaded into a
    plain ``XGBClassifier``. Up to 8192 rows this is one batch, which bins exactly as
    ``XGBClassifier.fit`` on the array; with more rows the quantile sketch is merged over
    batches and may place some bin edges differently.
    """

    accepts_row_source = True
    #: ``predict`` is ``classes_[argmax(predict_proba)]``.
    predict_is_argmax_proba = True

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.2,
        max_depth: int = 3,
        subsample: float = 0.8,
        colsample_bytree: float = 0.2,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int | None = 20,
        validation_fraction: float = 0.1,
        tree_method: str = "hist",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = None,
        xgb_params: dict[str, Any] | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.tree_method = tree_method
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.xgb_params = xgb_params

    def _make_booster(self, early_stopping: bool):
        from xgboost import XGBClassifier

        seed = self.random_state
        if seed is not None and not isinstance(seed, numbers.Integral):
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        return XGBClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            tree_method=self.tree_method,
            device=self.device_,
            n_jobs=self.n_jobs,
            random_state=seed,
            early_stopping_rounds=self.early_stopping_rounds if early_stopping else None,
            **(self.xgb_params or {}),
        )

    def fit(self, X: ArrayLike | RowSource, y: ArrayLike) -> XGBoostClassifier:
        """Fit the booster on ``X`` and labels ``y`` of any type.

        Parameters
        ----------
        X : array-like or RowSource of shape (n_samples, n_features)
            An array, or a :class:`~pipeline.rows.RowSource` (e.g. a store's rows), which is
            read block by block into XGBoost's binned ``QuantileDMatrix`` and never held whole.
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : XGBoostClassifier
        """
        name = type(self).__name__
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(
                f"{name}: device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}"
            )
        if not (0 < self.validation_fraction < 1):
            raise ValueError(
                f"{name}: validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        source, y = self._validate_rows(X, y)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        _check_at_least_two_classes(self.classes_, name)
        y_enc = encoder.transform(y)
        self.device_ = auto_device() if self.device == "auto" else self.device
        early, train_positions, val_positions = self.validation_split(y_enc)
        self.estimator_ = self._train(
            self._make_booster(early), source, y_enc, train_positions, val_positions
        )
        self.best_iteration_ = self.estimator_.best_iteration if early else None
        return self

    def _validate_rows(self, X: Any, y: ArrayLike) -> tuple[RowSource, np.ndarray]:
        """``X`` as a row source (an array is validated as scikit-learn does) and ``y``."""
        if not isinstance(X, RowSource):
            X, y = validate_data(self, X, y, dtype=np.float32)
            return ArrayRows(X), y
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        if len(X) == 0:
            raise ValueError(f"{type(self).__name__}: X has 0 samples; at least 1 is required")
        self.n_features_in_ = int(X.shape[1])
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_  # a source has no column names (as validate_data resets)
        return X, y

    def validation_split(self, y_enc: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
        """(early stopping?, sorted train positions, sorted validation positions): a seeded
        ``validation_fraction`` held out, stratified when possible; no early stopping (all
        positions train) with fewer than 10 rows or when the split would lose a class."""
        everything, nothing = np.arange(len(y_enc)), np.arange(0)
        if not (self.early_stopping_rounds and len(y_enc) >= 10):
            return False, everything, nothing
        seed = self.random_state if isinstance(self.random_state, numbers.Integral) else 0
        split = {"test_size": self.validation_fraction, "random_state": seed}
        try:
            train, val = train_test_split(everything, stratify=y_enc, **split)
        except ValueError:  # a class with a single row cannot be stratified
            train, val = train_test_split(everything, **split)
        if len(np.unique(y_enc[train])) < len(np.unique(y_enc)):
            return False, everything, nothing
        return True, np.sort(train), np.sort(val)

    def _train(
        self,
        model: Any,
        source: RowSource,
        y_enc: np.ndarray,
        train_positions: np.ndarray,
        val_positions: np.ndarray,
    ) -> Any:
        """Train ``model`` (an unfitted ``XGBClassifier``) as its own ``fit`` would, with the
        same parameters, on matrices from :meth:`_matrices`; returns ``model`` fitted."""
        import xgboost

        if callable(model.objective) or callable(model.eval_metric):
            name = type(self).__name__
            raise ValueError(f"{name}: xgb_params cannot hold a callable objective or eval_metric")
        params = model.get_xgb_params()  # what XGBClassifier.fit passes to xgboost.train
        if len(self.classes_) > 2:
            if params.get("objective") != "multi:softmax":
                params["objective"] = "multi:softprob"
            params["num_class"] = len(self.classes_)
        dtrain, evals = self._matrices(model, source, y_enc, train_positions, val_positions)
        booster = xgboost.train(
            params,
            dtrain,
            model.get_num_boosting_rounds(),
            evals=evals,
            early_stopping_rounds=model.early_stopping_rounds,
            verbose_eval=False,
            callbacks=model.callbacks,
        )
        # The documented way from a Booster to a plain XGBClassifier (what predict and
        # pickling use); it restores n_classes_, the objective and best_iteration.
        model.load_model(bytearray(booster.save_raw("ubj")))
        return model

    def _matrices(
        self,
        model: Any,
        source: RowSource,
        y_enc: np.ndarray,
        train_positions: np.ndarray,
        val_positions: np.ndarray,
    ) -> tuple[Any, list[tuple[Any, str]]]:
        """(training matrix, evaluation list). With ``hist`` trees (the default) the training
        rows go into a ``QuantileDMatrix`` block by block and the validation rows, a small
        share read at once, are binned on its bins (``ref``), as ``XGBClassifier.fit`` bins an
        eval set; other tree methods need the floats: a plain ``DMatrix`` of all rows."""
        import xgboost

        from ._xgb_rows import quantile_matrix  # lazy: imports xgboost

        early = len(val_positions) > 0
        train = source.subset(train_positions) if early else source
        y_train, y_val = y_enc[train_positions], y_enc[val_positions]
        common = {"nthread": model.n_jobs, "missing": model.missing}
        if model.tree_method in ("hist", None, "auto") and model.booster != "gblinear":
            binned = {"max_bin": model.max_bin, **common}
            dtrain = quantile_matrix(train, y_train, owner=type(self).__name__, **binned)
            if not early:
                return dtrain, []
            X_val = source.take(val_positions)  # a store reads covering ranges of capped size
            return dtrain, [(xgboost.QuantileDMatrix(X_val, y_val, ref=dtrain, **binned), _VAL)]
        dtrain = xgboost.DMatrix(materialize(train), y_train, **common)
        if not early:
            return dtrain, []
        return dtrain, [(xgboost.DMatrix(source.take(val_positions), y_val, **common), _VAL)]

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities; columns follow ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        proba = np.asarray(self.estimator_.predict_proba(X), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted labels in their original type."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
