"""The Nystroem kernel map of ``svc_approx``, whose output does not depend on the batch.

scikit-learn's :class:`~sklearn.kernel_approximation.Nystroem` draws its components at random
from the training rows, so on data with duplicate rows (a store holding the same image twice)
it can draw two identical rows. Their kernel matrix is then singular: its smallest singular
value (~1e-17) is clipped to 1e-12, ``normalization_`` holds entries up to ~1e6, and a float32
matrix product, blocked differently by each BLAS kernel and for each number of rows, turns one
rounding unit into up to 0.3 of a mapped feature (and of a probability). Measured in
docs/benchmarks.md ("svc_approx: predictions independent of the batch").

:class:`DistinctNystroem` is that map with two changes:

- the components are distinct rows: the same random permutation as scikit-learn's, skipping a
  row bitwise equal to one already drawn, so no component is wasted on a copy and the
  component kernel is as well conditioned as the data allows;
- it computes in float64 (components, ``normalization_``, the kernel rows and the map, one
  block of rows at a time), so what is left of the amplification (near-duplicate rows, which
  no selection can tell apart from distinct ones) acts on float64 rounding: 1e-10 instead of
  1e-3 in the mapped features. The output is float64, which the linear SVM after it needs
  anyway (liblinear copies float32 input to float64).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["DistinctNystroem"]

#: Rows mapped at once by ``transform``: bounds its float64 working copies (the block and its
#: kernel rows) whatever the number of rows.
_BLOCK_ROWS = 4096


def first_distinct_rows(X: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """Positions of the first ``n`` rows of ``X``, taken in ``order``, that are bitwise
    distinct from every row taken before (fewer if ``X`` has fewer distinct rows)."""
    seen: set[bytes] = set()
    taken: list[int] = []
    for i in order:
        key = np.ascontiguousarray(X[i]).tobytes()
        if key not in seen:
            seen.add(key)
            taken.append(int(i))
            if len(taken) == n:
                break
    return np.asarray(taken, dtype=np.intp)


class DistinctNystroem(Nystroem):
    """:class:`~sklearn.kernel_approximation.Nystroem` on distinct components, in float64.

    Same parameters and attributes as ``Nystroem`` (dense input only). The components are
    the first ``n_components`` bitwise-distinct rows of a random permutation of the training
    rows (fewer, with a warning, if there are fewer distinct rows); the component kernel, its
    normalization and the map are computed in float64, and ``transform`` returns float64.

    A row's mapped features therefore do not depend on the rows transformed with it, nor on
    the machine's BLAS kernel, beyond float64 rounding amplified by the conditioning of the
    component kernel (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], dtype=np.float32)
    >>> nys = DistinctNystroem(n_components=3, random_state=0).fit(X)
    >>> len(np.unique(nys.components_, axis=0)), nys.transform(X).dtype
    (3, dtype('float64'))
    """

    def fit(self, X: ArrayLike, y: object = None) -> DistinctNystroem:
        """Draw distinct components and compute the normalization, in float64.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self : DistinctNystroem
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n_samples = X.shape[0]
        if self.n_components > n_samples:
            warnings.warn(
                f"n_components={self.n_components} > n_samples={n_samples}: using "
                f"{n_samples} components, which evaluates the full kernel",
                stacklevel=2,
            )
        n_components = min(n_samples, self.n_components)
        order = check_random_state(self.random_state).permutation(n_samples)
        basis_inds = first_distinct_rows(X, order, n_components)
        if len(basis_inds) < n_components:
            warnings.warn(
                f"only {len(basis_inds)} distinct rows for n_components={n_components}: "
                f"using {len(basis_inds)} components",
                stacklevel=2,
            )
        basis = X[basis_inds].astype(np.float64)
        basis_kernel = pairwise_kernels(
            basis,
            metric=self.kernel,
            filter_params=True,
            n_jobs=self.n_jobs,
            **self._get_kernel_params(),
        )
        U, S, V = np.linalg.svd(basis_kernel)
        S = np.maximum(S, 1e-12)  # as scikit-learn's Nystroem
        self.normalization_ = (U / np.sqrt(S)) @ V
        self.components_ = basis
        self.component_indices_ = basis_inds
        self._n_features_out = len(basis_inds)
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """Map ``X`` (float64 arithmetic, a block of rows at a time).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), float64
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        params = self._get_kernel_params()
        out = np.empty((X.shape[0], self.components_.shape[0]), dtype=np.float64)
        for start in range(0, X.shape[0], _BLOCK_ROWS):
            block = X[start : start + _BLOCK_ROWS].astype(np.float64)
            kernel = pairwise_kernels(
                block,
                self.components_,
                metric=self.kernel,
                filter_params=True,
                n_jobs=self.n_jobs,
                **params,
            )
            out[start : start + len(block)] = kernel @ self.normalization_.T
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = False
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
