"""Triton kernels of the SE operators: each pass over an (N, C, H, W) tensor the SE block needs, once.

Four kernels serve both operators of :mod:`senet.ops.squeeze_excite`; everything (N, C)-sized around them (the
excitation, BatchNorm's batch statistics, the gate's derivative) stays in PyTorch:

- :func:`channel_sums`: per (n, c) sums over H*W (the squeeze; with ``squares``, BatchNorm's statistics too);
- :func:`scale`: ``relu?(residual + x * p[n, c] + r[n, c])`` (SE's rescale, optionally of ``BatchNorm(x)``);
- :func:`grad_sums`: per (n, c) sums of ``g`` and ``g * x`` (and of ``x``), ``g`` the gradient masked by the
  fused ReLU (the gate's gradient and BatchNorm's reductions, in one read);
- :func:`grad_apply`: ``g * p[n, c] + x * q[c] + r[n, c]`` and ``g`` itself (the input and
  residual gradients).

Every kernel takes its tensors' strides, so NCHW and channels_last (and a residual laid out differently from
x) are read where they lie; H and W are walked as one axis. Accumulation is fp32 for fp16, bf16 and fp32
inputs. One program owns a block of channels of one sample and loops over H*W in order: no atomics, so the
results are bitwise reproducible (``torch.use_deterministic_algorithms`` holds). Written for Triton 3.6 and
later; under ``TRITON_INTERPRET=1`` (read when this module is imported) they run on CPU tensors, which is how
CI tests them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from senet.ops.triton_switch import SWITCH, SEKernelError

Tensor = torch.Tensor
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _flat_strides(t: Tensor) -> tuple[int, int, int] | None:
    """(stride_n, stride_c, stride_hw) when H and W can be walked as one axis (NCHW, channels_last...)."""
    sn, sc, sh, sw = t.stride()
    height, width = t.shape[2:]
    if width == 1:
        return sn, sc, sh
    if height == 1 or sh == width * sw:
        return sn, sc, sw
    return None


def _walkable(t: Tensor, like: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    strides = _flat_strides(t)
    if strides is None:  # e.g. a sliced view: copy it into x's layout
        t = t.contiguous(memory_format=_memory_format(like))
        strides = _flat_strides(t)
    return t, strides


def _memory_format(t: Tensor) -> torch.memory_format:
    return (
        torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


def _blocks(x: Tensor) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): wide along whichever axis is contiguous in memory, so loads coalesce."""
    channels, hw = x.shape[1], x.shape[2] * x.shape[3]
    if x.stride(1) == 1 and channels > 1:  # channels_last
        return min(64, triton.next_power_of_2(channels)), min(32, triton.next_power_of_2(hw))
    return min(16, triton.next_power_of_2(channels)), min(256, triton.next_power_of_2(hw))


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _channel_sums_kernel(
    x_ptr, sum_ptr, sq_ptr, shift_ptr, C, HW, sxn, sxc, sxhw,
    SQUARES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    rows = x_ptr + n * sxn + c * sxc
    # BatchNorm's statistics: sums of (x - x[first]) keep the variance exact where the mean is large.
    shift = tl.load(rows, mask=c_ok, other=0.0).to(tl.float32)
    total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    squares = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = (hw[:, None] < HW) & c_ok[None, :]
        values = tl.load(rows[None, :] + hw[:, None] * sxhw, mask=ok, other=0.0).to(tl.float32)
        if SQUARES:
            values = tl.where(ok, values - shift[None, :], 0.0)
            squares += values * values
        total += values
    out = n * C + c
    tl.store(sum_ptr + out, tl.sum(total, axis=0), mask=c_ok)
    if SQUARES:
        tl.store(sq_ptr + out, tl.sum(squares, axis=0), mask=c_ok)
        tl.store(shift_ptr + out, shift, mask=c_ok)


@triton.jit
def _scale_kernel(
    x_ptr, res_ptr, out_ptr, p_ptr, r_ptr, C, HW,
    sxn, sxc, sxhw, srn, src, srhw, son, soc, sohw,
    HAS_RESIDUAL: tl.constexpr, HAS_SHIFT: tl.constexpr, RELU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    c_ok = c < C
    ok = (hw[:, None] < HW) & c_ok[None, :]
    p = tl.load(p_ptr + n * C + c, mask=c_ok, other=0.0)
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + hw[:, None] * sxhw, mask=ok, other=0.0).to(tl.float32)
    out = x * p[None, :]
    if HAS_SHIFT:
        out += tl.load(r_ptr + n * C + c, mask=c_ok, other=0.0)[None, :]
    if HAS_RESIDUAL:
        res_ptrs = res_ptr + n * srn + c[None, :] * src + hw[:, None] * srhw
        out += tl.load(res_ptrs, mask=ok, other=0.0).to(tl.float32)
    if RELU:
        out = tl.maximum(out, 0.0)
    out_ptrs = out_ptr + n * son + c[None, :] * soc + hw[:, None] * sohw
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _masked_grad(grad_ptr, out_ptr, offsets_g, offsets_o, ok, RELU: tl.constexpr):
    """The incoming gradient through the fused ReLU: zero where the output was clamped."""
    g = tl.load(grad_ptr + offsets_g, mask=ok, other=0.0).to(tl.float32)
    if RELU:
        out = tl.load(out_ptr + offsets_o, mask=ok, other=0.0)
        g = tl.where(out > 0, g, 0.0)
    return g


@triton.jit
def _grad_sums_kernel(
    grad_ptr, out_ptr, x_ptr, g_sum_ptr, gx_sum_ptr, x_sum_ptr, C, HW,
    sgn, sgc, sghw, son, soc, sohw, sxn, sxc, sxhw,
    RELU: tl.constexpr, X_SUMS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    g_total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    gx_total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    x_total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = (hw[:, None] < HW) & c_ok[None, :]
        offsets_g = n * sgn + c[None, :] * sgc + hw[:, None] * sghw
        offsets_o = n * son + c[None, :] * soc + hw[:, None] * sohw
        g = _masked_grad(grad_ptr, out_ptr, offsets_g, offsets_o, ok, RELU)
        x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + hw[:, None] * sxhw, mask=ok, other=0.0).to(
            tl.float32
        )
        g_total += g
        gx_total += g * x
        if X_SUMS:
            x_total += x
    out = n * C + c
    tl.store(g_sum_ptr + out, tl.sum(g_total, axis=0), mask=c_ok)
    tl.store(gx_sum_ptr + out, tl.sum(gx_total, axis=0), mask=c_ok)
    if X_SUMS:
        tl.store(x_sum_ptr + out, tl.sum(x_total, axis=0), mask=c_ok)


@triton.jit
def _grad_apply_kernel(
    grad_ptr, out_ptr, x_ptr, dx_ptr, dres_ptr, p_ptr, q_ptr, r_ptr, C, HW,
    sgn, sgc, sghw, son, soc, sohw, sxn, sxc, sxhw, sdn, sdc, sdhw, srn, src, srhw,
    RELU: tl.constexpr, HAS_Q: tl.constexpr, WRITE_RESIDUAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    c_ok = c < C
    ok = (hw[:, None] < HW) & c_ok[None, :]
    offsets_g = n * sgn + c[None, :] * sgc + hw[:, None] * sghw
    offsets_o = n * son + c[None, :] * soc + hw[:, None] * sohw
    g = _masked_grad(grad_ptr, out_ptr, offsets_g, offsets_o, ok, RELU)
    p = tl.load(p_ptr + n * C + c, mask=c_ok, other=0.0)
    r = tl.load(r_ptr + n * C + c, mask=c_ok, other=0.0)
    dx = g * p[None, :] + r[None, :]
    if HAS_Q:
        x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + hw[:, None] * sxhw, mask=ok, other=0.0).to(
            tl.float32
        )
        dx += x * tl.load(q_ptr + c, mask=c_ok, other=0.0)[None, :]
    dx_ptrs = dx_ptr + n * sdn + c[None, :] * sdc + hw[:, None] * sdhw
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    if WRITE_RESIDUAL:
        dres_ptrs = dres_ptr + n * srn + c[None, :] * src + hw[:, None] * srhw
        tl.store(dres_ptrs, g.to(dres_ptr.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------------------- launchers


def _launch(kernel, grid: tuple[int, ...], *args, **constexprs) -> None:
    """Every kernel launch goes through here: one place to name a failing kernel and the way around it (and
    the place tests intercept to see the launch plans without a GPU)."""
    try:
        kernel[grid](*args, **constexprs)
    except Exception as error:  # a compiler or driver error deep inside Triton: one line, no Triton traceback
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
        raise SEKernelError(
            f"senet's Triton kernel {kernel.fn.__name__} failed on {_device_name(args[0].device)} "
            f"({reason}); set {SWITCH} to use the SE operators' PyTorch implementation"
        ) from None


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device.type} (Triton's interpreter)"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


def _per_sample_channel(values: Tensor | None, x: Tensor) -> Tensor | None:
    """An (N, C) coefficient as the contiguous fp32 the kernels index with ``n * C + c``."""
    return None if values is None else values.to(torch.float32).expand(x.shape[:2]).contiguous()


def channel_sums(x: Tensor, squares: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per (n, c) ``sum_hw x`` (fp32); with ``squares`` the sums are of ``x - shift`` and come with
    ``sum_hw (x - shift)^2`` and the shift (``x[n, c, 0, 0]``), for numerically exact variances."""
    n, channels = x.shape[:2]
    x, strides = _walkable(x, x)
    sums = torch.empty(n, channels, device=x.device, dtype=torch.float32)
    sq, shift = (torch.empty_like(sums), torch.empty_like(sums)) if squares else (sums, sums)
    if x.numel():
        block_c, block_hw = _blocks(x)
        _launch(
            _channel_sums_kernel, (n, triton.cdiv(channels, block_c)),
            x, sums, sq, shift, channels, x.shape[2] * x.shape[3], *strides,
            SQUARES=squares, BLOCK_C=block_c, BLOCK_HW=block_hw,
        )  # fmt: skip
    else:
        sums.zero_()
    return (sums, sq, shift) if squares else (sums, None, None)


def _grid(x: Tensor, block_c: int, block_hw: int) -> tuple[int, int, int]:
    return x.shape[0], triton.cdiv(x.shape[1], block_c), triton.cdiv(x.shape[2] * x.shape[3], block_hw)


def scale(x: Tensor, residual: Tensor | None, p: Tensor, r: Tensor | None, relu: bool) -> Tensor:
    """``relu?(residual + x * p + r)`` with (N, C) p and r, laid out as x, in x's dtype."""
    has_residual = residual is not None  # decided here, never by identity: residual may be x itself
    x, x_strides = _walkable(x, x)
    out = torch.empty_like(x)
    residual, res_strides = _walkable(residual, x) if has_residual else (x, x_strides)
    if x.numel():
        block_c, block_hw = _blocks(x)
        p32, r32 = _per_sample_channel(p, x), _per_sample_channel(r, x)
        _launch(
            _scale_kernel, _grid(x, block_c, block_hw),
            x, residual, out, p32, r32 if r32 is not None else p32, x.shape[1], x.shape[2] * x.shape[3],
            *x_strides, *res_strides, *_flat_strides(out),
            HAS_RESIDUAL=has_residual, HAS_SHIFT=r is not None, RELU=relu,
            BLOCK_C=block_c, BLOCK_HW=block_hw,
        )  # fmt: skip
    return out


def grad_sums(grad: Tensor, out: Tensor | None, x: Tensor, x_sums: bool = False) -> tuple[Tensor, ...]:
    """Per (n, c) ``sum_hw g``, ``sum_hw g * x`` (and ``sum_hw x``), g the gradient masked by ``out > 0``
    where the ReLU was fused (``out`` given)."""
    n, channels = x.shape[:2]
    relu = out is not None  # decided here, never by identity: out may be the same tensor as grad
    x, x_strides = _walkable(x, x)
    grad, g_strides = _walkable(grad, x)
    out, o_strides = _walkable(out, x) if relu else (grad, g_strides)
    g_sum = torch.empty(n, channels, device=x.device, dtype=torch.float32)
    gx_sum, x_sum = torch.empty_like(g_sum), torch.empty_like(g_sum)
    if x.numel():
        block_c, block_hw = _blocks(x)
        _launch(
            _grad_sums_kernel, (n, triton.cdiv(channels, block_c)),
            grad, out, x, g_sum, gx_sum, x_sum, channels, x.shape[2] * x.shape[3],
            *g_strides, *o_strides, *x_strides,
            RELU=relu, X_SUMS=x_sums, BLOCK_C=block_c, BLOCK_HW=block_hw,
        )  # fmt: skip
    else:
        for t in (g_sum, gx_sum, x_sum):
            t.zero_()
    return (g_sum, gx_sum, x_sum) if x_sums else (g_sum, gx_sum)


def grad_apply(
    grad: Tensor,
    out: Tensor | None,
    x: Tensor,
    p: Tensor,
    q: Tensor | None,
    r: Tensor,
    residual_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """``dx = g * p[n, c] + x * q[c] + r[n, c]`` laid out as x, and (with ``residual_grad``) g itself, the
    residual's gradient through the fused ReLU."""
    relu = out is not None  # as in grad_sums
    x, x_strides = _walkable(x, x)
    grad, g_strides = _walkable(grad, x)
    out, o_strides = _walkable(out, x) if relu else (grad, g_strides)
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if residual_grad else None
    target = dres if dres is not None else dx
    if x.numel():
        block_c, block_hw = _blocks(x)
        p32, r32 = _per_sample_channel(p, x), _per_sample_channel(r, x)
        q32 = q.to(torch.float32).contiguous() if q is not None else p32
        _launch(
            _grad_apply_kernel, _grid(x, block_c, block_hw),
            grad, out, x, dx, target, p32, q32, r32, x.shape[1], x.shape[2] * x.shape[3],
            *g_strides, *o_strides, *x_strides, *_flat_strides(dx), *_flat_strides(target),
            RELU=relu, HAS_Q=q is not None, WRITE_RESIDUAL=dres is not None,
            BLOCK_C=block_c, BLOCK_HW=block_hw,
        )  # fmt: skip
    return dx, dres
