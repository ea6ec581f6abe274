"""Torch devices named by users (``--device``, ``Engine(device=…)``): checked once, with a one-line error."""

from __future__ import annotations

from typing import Any

from forensics.errors import UsageError


def torch_device(spec: Any):
    """The ``torch.device`` that ``spec`` ("cpu", "cuda", "cuda:1", "mps", or a torch.device) names, when this
    torch can use it; otherwise a UsageError that says what to use instead."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(f"unknown device {spec!r} ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} asked for, but this torch sees no CUDA GPU "
                             f"(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s): use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {spec!r} asked for, but MPS is not available here; use --device cpu")
    return device
