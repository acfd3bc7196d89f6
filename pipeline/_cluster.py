"""Dask clusters for both stages: ``--dask local[:N]`` or ``--dask tcp://HOST:PORT``.

``local`` starts a :class:`distributed.LocalCluster` of N single-threaded worker processes (N
defaults to the number of CUDA GPUs, else 2); an address joins a running scheduler. Dask does
all scheduling, retries and worker-loss recovery: nothing here talks to sockets or keeps a queue.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from .exceptions import ConfigError

__all__ = ["count_workers", "dask_client", "parse_dask_spec"]

logger = logging.getLogger(__name__)


def parse_dask_spec(spec: str) -> tuple[str, Any]:
    """Parse ``--dask``: ``("local", n_workers)`` or ``("address", "tcp://HOST:PORT")``.

    ``local`` alone means one worker per CUDA GPU, or 2 workers without a GPU.
    """
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if not count:
            import torch

            return "local", torch.cuda.device_count() or 2
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(
                f"{spec!r}: the worker count after 'local:' must be a positive integer",
                param="dask",
            )
        return "local", int(count)
    if "://" in spec and spec.split("://", 1)[1]:
        return "address", spec
    raise ConfigError(
        f"{spec!r} is neither local[:N] nor a scheduler address such as tcp://HOST:8786",
        param="dask",
    )


@contextlib.contextmanager
def dask_client(spec: str) -> Iterator[Any]:
    """A connected :class:`distributed.Client` for ``--dask``; a local cluster is closed after."""
    import dask
    from distributed import Client, LocalCluster

    kind, value = parse_dask_spec(spec)
    if kind == "address":
        try:
            client = Client(value, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach a Dask scheduler at {value} ({exc})",
                param="dask",
            ) from exc
        with client:
            yield client
        return
    # Non-daemonic workers may start DataLoader decoding processes of their own.
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        LocalCluster(
            n_workers=value,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "started a local Dask cluster of %d worker processes (dashboard: %s)",
            value,
            client.dashboard_link,
        )
        yield client


def count_workers(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))
