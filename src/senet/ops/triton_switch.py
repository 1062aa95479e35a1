"""The one switch between the SE operators' Triton kernels and their PyTorch implementation on CUDA.

``SENET_TRITON=0`` (also ``false``, ``no``, ``off``) in the environment, or :func:`use_triton_kernels(False)
<use_triton_kernels>`, makes the operators compute with PyTorch's ops on CUDA too: the same results, more
passes over memory. It is the way around a kernel that fails to compile or launch on a user's GPU, which stops
with :class:`SEKernelError` naming the kernel, the GPU and this switch.
"""

from __future__ import annotations

import os

SWITCH = "SENET_TRITON=0 (or senet.ops.use_triton_kernels(False))"
_FALSE_SPELLINGS = ("0", "false", "no", "off")
_enabled = os.environ.get("SENET_TRITON", "1").strip().lower() not in _FALSE_SPELLINGS


class SEKernelError(RuntimeError):
    """A Triton kernel of the SE operators failed to compile or launch on this GPU."""


def use_triton_kernels(enabled: bool = True) -> None:
    """Whether the SE operators use their Triton kernels on CUDA (default: yes, unless ``SENET_TRITON=0``)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"use_triton_kernels got {enabled!r}; use True or False")
    _enabled = enabled


def triton_enabled() -> bool:
    return _enabled
