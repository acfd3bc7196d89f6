"""What the GPU benchmarks print first: the machine, so every table says where it was measured."""

from __future__ import annotations

import os
import platform


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe(device: str) -> str:
    """One line: accelerator (name, memory, CUDA) or CPU model, cores, torch, load average."""
    import torch
    import torchvision

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        accel = (
            f"{torch.cuda.get_device_name(torch.device(device))} "
            f"({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"
        )
    else:
        accel = f"CPU only ({_cpu_model()})"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{accel}; {cores()} cores; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, Python {platform.python_version()}; "
        f"load average {' '.join(f'{x:.2f}' for x in load)}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sync(device: str) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))
