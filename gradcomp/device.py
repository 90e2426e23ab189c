"""Check a torch device string before any work starts: one clear ``ValueError`` instead of a raw
``RuntimeError`` (unknown device type) or ``AssertionError`` (a torch build without CUDA)."""

from __future__ import annotations

import warnings

import torch

__all__ = ["check_device"]


def check_device(device: str | torch.device, *, available: bool = True) -> torch.device:
    """Parse ``device`` and, with ``available``, check that this process can use it.

    Args:
        device: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) or device.
        available: also check that the device exists here (off for devices of remote workers).

    Returns:
        The parsed ``torch.device``.

    Raises:
        ValueError: not a device string, the ``meta`` device, or (with ``available``) a device
            this process cannot use; the message is one line.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {str(device)!r} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data; use cpu, cuda, cuda:N or mps")
    if not available or dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(
                f"device {str(device)!r}: this torch build ({torch.__version__}) has no CUDA "
                "support; use --device cpu or install a CUDA build of torch"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on a failed CUDA initialisation
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: no CUDA device is available here")
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r}: only {count} CUDA device(s) here (cuda:0..{count - 1})"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available here")
        return dev
    try:  # any other backend: allocate one element to find out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.empty(1, device=dev)
    except Exception as err:  # backends raise many types; the message is kept
        text = " ".join(str(err).split())[:160]
        raise ValueError(f"device {str(device)!r} is not usable here ({text})") from None
    return dev
