"""Precision-aware expectations, so that the suite holds on a CPU and on a GPU machine alike:
what ``--precision auto`` gives here, another precision, and how closely two runs that batched
the same images differently (batch size, resume, Dask shards) must agree."""

from __future__ import annotations

import numpy as np

from pipeline._runtime import resolve_device, resolve_precision

#: Unit roundoff of the half-precision formats: 2^-(significand bits, the implicit one included).
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}

#: Allowed per-row relative L2 difference, in units of the format's roundoff. A bf16 run of
#: the tests' backbone (squeezenet1_1, random init, on the tests' 32x32 images) is at most
#: 1.6 u from the fp32 result per row (0.62 %, measured on CPU), so two bf16 runs whose kernels
#: round differently are at most about 3.2 u apart; 8 u (3.1 % in bf16, 0.39 % in fp16) leaves
#: room for kernels that round worse. On an H200 a resumed bf16 store (batches of 3) differed
#: from a clean one (batches of 256) by at most 0.0156 per element, one bf16 step for values in
#: [2, 4); even if every one of the 512 elements moved that much, the rows (norms >= 16.8)
#: would be 2.1 % apart.
ROUNDOFF_UNITS = 8


def default_precision() -> str:
    """What ``--precision auto`` (``--device auto``) resolves to on this machine: fp32 on a
    CPU, bf16 (fp16 where bf16 is unsupported) on a GPU."""
    return resolve_precision("auto", resolve_device("auto"))


def other_precision(precision: str) -> str:
    """A precision other than ``precision``, usable on any machine (bf16 autocast runs on CPU)."""
    return "bf16" if precision == "fp32" else "fp32"


def assert_embeddings_match(actual, expected, precision: str) -> None:
    """Embeddings of the same images, computed in ``precision`` in differently composed
    batches, agree to that format's rounding.

    fp32 (the CPU default): elementwise within rtol 1e-4, atol 1e-5; only the summation order
    may differ. bf16/fp16 (the GPU defaults): GPU kernels are chosen per batch shape and round
    differently, so an embedding depends on the batch it was computed in; each row must be
    within ``ROUNDOFF_UNITS`` units of roundoff of ``expected``'s norm (see above).
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if precision == "fp32":
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
        return
    bound = ROUNDOFF_UNITS * UNIT_ROUNDOFF[precision]
    error = np.linalg.norm(actual - expected, axis=-1)
    scale = np.linalg.norm(expected, axis=-1)
    worst = float(np.max(error / np.maximum(scale, np.finfo(np.float64).tiny)))
    assert np.all(error <= bound * scale), (
        f"{precision} embeddings differ by up to {worst:.3%} of a row's norm (allowed: {bound:.3%})"
    )
