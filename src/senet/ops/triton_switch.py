"""The one switch between the SE operators' Triton kernels and their PyTorch implementation on CUDA.

``SENET_TRITON=0`` (also ``false``, ``no``, ``off``) in the environment, or :func:`use_triton_kernels(False)
<use_triton_kernels>`, makes the operators compute with PyTorch's ops on CUDA too: the same results, more
passes over memory. It is the way around a kernel that fails to compile or launch on a user's GPU, which stops
with :class:`SEKernelError` naming the kernel, the GPU and this switch.
"""

from __future__ import annotations

import os

SWITCH = "SENET_TRITON=0 (or senet.ops.use_triton_kernels(False))"
_SPELLINGS = {
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
}
_enabled: bool | None = None  # None: not chosen yet; the environment decides at the first use


class SEKernelError(RuntimeError):
    """A Triton kernel of the SE operators failed to compile or launch on this GPU."""


def use_triton_kernels(enabled: bool = True) -> None:
    """Whether the SE operators use their Triton kernels on CUDA (default: yes, unless ``SENET_TRITON=0``)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"use_triton_kernels got {enabled!r}; use True or False")
    _enabled = enabled


def triton_enabled() -> bool:
    """The switch; the first call reads ``SENET_TRITON``, and refuses a value that is neither on nor off."""
    global _enabled
    if _enabled is None:
        value = os.environ.get("SENET_TRITON", "1")
        if value.strip().lower() not in _SPELLINGS:
            raise ValueError(
                f"SENET_TRITON={value!r} is neither on nor off: set it to 0 (false, no, off) to leave the "
                "SE operators' Triton kernels, or 1 (true, yes, on) to use them"
            )
        _enabled = _SPELLINGS[value.strip().lower()]
    return _enabled
