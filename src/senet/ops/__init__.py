"""Fused operators registered with ``torch.library`` (``torch.ops.senet.*``): tensors in, tensors out."""
