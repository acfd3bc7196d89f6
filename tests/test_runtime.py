"""resolve_runtime: one resolver for device, precision, batch size, workers and backend."""

from __future__ import annotations

import pytest

from pipeline._runtime import BACKENDS, cpu_cores, resolve_runtime
from pipeline.exceptions import ConfigError


def test_auto_values_resolve_for_the_cpu():
    runtime = resolve_runtime("cpu")
    assert str(runtime.device) == "cpu" and runtime.precision == "fp32"
    assert runtime.batch_size == 32 and runtime.workers >= 1 and runtime.threads >= 1
    assert runtime.backend == "auto"


def test_explicit_values_are_kept():
    runtime = resolve_runtime("cpu", "bf16", batch_size=3, workers=0, backend="torch")
    assert (runtime.precision, runtime.batch_size, runtime.workers) == ("bf16", 3, 0)


@pytest.mark.parametrize("workers", [0, 1, 7])
def test_the_forward_pass_gets_every_core_whatever_the_decoding_workers(workers):
    # Its threads do not spin, so decoding threads take the cores while it waits.
    assert resolve_runtime("cpu", workers=workers).threads == cpu_cores()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"device": "tpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"batch_size": -1}, "batch_size"),
        ({"backend": "tensorrt"}, "backend"),
    ],
)
def test_bad_values_name_their_parameter(kwargs, param):
    with pytest.raises(ConfigError) as info:
        resolve_runtime(**{"device": "cpu", **kwargs})
    assert info.value.param == param and isinstance(info.value, ValueError)


def test_backends_are_listed_once():
    assert BACKENDS == ("auto", "torch", "onnxruntime")
