"""Fused operators registered with ``torch.library`` (``torch.ops.senet.*``): tensors in, tensors out."""

from senet.ops.triton_switch import SEKernelError, use_triton_kernels

__all__ = ["SEKernelError", "use_triton_kernels"]
