"""The Squeeze-and-Excitation block (paper Sec. 3) and the options its ablations vary (Sec. 6).

One module serves every network family: a family decides *where* the block goes (``SEConfig.position``,
``SEConfig.stages``); the block itself only decides *how* channels are recalibrated.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.utils.hooks import RemovableHandle

from senet.ops import squeeze_excite as ops

Squeeze = Literal["avg", "max", "none"]
Gate = Literal["sigmoid", "tanh", "relu", "2sigmoid"]
Position = Literal["standard", "pre", "post", "identity", "3x3"]

SQUEEZES: tuple[str, ...] = ("avg", "max", "none")
GATES: tuple[str, ...] = ("sigmoid", "tanh", "relu", "2sigmoid")
POSITIONS: tuple[str, ...] = ("standard", "pre", "post", "identity", "3x3")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


# Every option of an SE block, the one place they are checked: (valid?, how to fix it), by the option's name.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "channels": (_positive_int, "use an integer >= 1"),
    "reduction": (_positive_int, "use an integer >= 1 (paper: 16)"),
    "squeeze": (lambda v: v in SQUEEZES, f"choose one of {', '.join(SQUEEZES)}"),
    "gate": (lambda v: v in GATES, f"choose one of {', '.join(GATES)}"),
    "bias": (lambda v: isinstance(v, bool), "use True or False"),  # a truthy string would give biases
    # a 0-wide bottleneck would build and gate every channel at the constant gate(fc2.bias)
    "hidden_channels": (lambda v: v is None or _positive_int(v), "use an integer >= 1, or None for C // r"),
    "position": (lambda v: v in POSITIONS, f"choose one of {', '.join(POSITIONS)}"),
    "recompute_norm": (lambda v: v in (None, True, False), "use True, False or None (auto)"),
}


def _check_options(owner: str, prefix: str, **options: Any) -> None:
    """Refuse a bad SE option in one line, named as its owner takes it (``SqueezeExcite``'s arguments, or the
    ``se_*`` build options of a network)."""
    for name, value in options.items():
        valid, fix = _CHECKS[name]
        if not valid(value):
            raise ValueError(f"{owner} got {prefix}{name}={value!r}; {fix}")
    if options.get("recompute_norm") is not None and options["squeeze"] != "avg":
        raise ValueError(  # the fused BatchNorm path would silently not recompute
            f"{owner} got {prefix}recompute_norm={options['recompute_norm']!r}; only the average squeeze's "
            f"training path recomputes the BatchNorm; {prefix}squeeze={options['squeeze']!r} never does: "
            "leave it out"
        )


class SqueezeExcite(nn.Module):
    """Squeeze (global pooling) -> excitation (FC-ReLU-FC-gate) -> channel-wise rescale. Paper Sec. 3.

    Args:
        channels: C, the number of channels of the input (and output).
        reduction: r, the excitation bottleneck ratio; the hidden width is ``C // r`` (at least 1, so on
            blocks narrower than r different ratios build the same block). r = 16 is the paper's
            default (Table 10).
        squeeze: ``"avg"`` global average pooling (paper), ``"max"`` global max pooling (Table 11), or
            ``"none"``: no pooling, the FCs act as 1x1 convs on every position (NoSqueeze, Table 16).
        gate: the excitation non-linearity: ``"sigmoid"`` (paper), ``"tanh"`` or ``"relu"`` (Table 12), or
            ``"2sigmoid"`` (2 * sigmoid: with ``fc2`` zeroed the block starts as the identity, for SE blocks
            added to a trained plain network by :func:`senet.add_se` with ``init="identity"``).
        bias: whether ``fc1``/``fc2`` have biases. The released models have them; the ResNet ablations
            drop them (Sec. 6).
        hidden_channels: explicit hidden width, overriding ``channels // reduction``.
        recompute_norm: in training, ``norm_scale_and_add`` keeps the BatchNorm's input instead of its output
            (less memory). ``None``: on CPU, where it is faster too (SE-ResNet-50 step 1.18x -> 1.04x of
            ResNet-50), and wherever the Triton kernels run (CUDA), which never write the BatchNorm's output
            at all. With PyTorch's ops on an H100 it saved the memory (1.27x -> 1.00x) but cost time (1.15x ->
            1.26x), docs/performance.md: ``True`` forces that path, ``False`` keeps the plain BatchNorm. Only
            the average squeeze takes that path: with ``"max"`` or ``"none"`` it must stay ``None``.

    The two FC layers are 1x1 convolutions named ``fc1``/``fc2``, as in the released Caffe models, so
    the same weights serve the squeezed (N, C, 1, 1) and the NoSqueeze (N, C, H, W) cases.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        squeeze: Squeeze = "avg",
        gate: Gate = "sigmoid",
        bias: bool = True,
        hidden_channels: int | None = None,
        recompute_norm: bool | None = None,
    ) -> None:
        super().__init__()
        _check_options(
            "SqueezeExcite", "", channels=channels, reduction=reduction, squeeze=squeeze, gate=gate,
            bias=bias, hidden_channels=hidden_channels, recompute_norm=recompute_norm,
        )  # fmt: skip
        hidden = hidden_channels if hidden_channels is not None else max(1, channels // reduction)
        self.channels = channels
        self.squeeze = squeeze
        self.gate = gate
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.relu = nn.ReLU()  # not in place: a full backward hook on fc1 forbids that, and it is (N, C / r)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self._gate_fn = ops.GATE_FUNCTIONS[gate]
        self.recompute_norm = recompute_norm
        # Gate 1 everywhere (the block removed, paper Sec. 7): what senet.analysis's removal study switches.
        self.removed = False
        self._gates_hooks: dict[int, Callable[[SqueezeExcite, torch.Tensor], None]] = OrderedDict()

    def register_gates_hook(self, hook: Callable[[SqueezeExcite, torch.Tensor], None]) -> RemovableHandle:
        """``hook(block, s)`` with the gates s of every input, wherever the block computes: while one is
        registered, the block steps off its fused paths (which never form s as a tensor of its own). Returns
        a handle whose ``remove()`` unregisters it."""
        handle = RemovableHandle(self._gates_hooks)
        self._gates_hooks[handle.id] = hook
        return handle

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation s of Eq. 3: (N, C, 1, 1), or (N, C, H, W) with ``squeeze="none"``; ones when the
        block is :attr:`removed`."""
        if self.removed:
            s = x.new_ones(x.shape[:2] + (1, 1))
        elif self.squeeze == "none":
            s = self._gate_fn(self.fc2(self.relu(self.fc1(x))))
        else:
            # On a squeezed (N, C) vector the 1x1 convs are matrix products: F.linear skips the convolution
            # machinery (oneDNN primitive look-up, layout reorders), which dominates at this size.
            z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
            if self._plain_excitation():
                s = ops.excitation(z, *self._fc_weights(), self.gate)[1][:, :, None, None]
            else:  # a replaced or hooked fc1 / relu / fc2 runs as the module it is
                s = self._gate_fn(self.fc2(self.relu(self.fc1(z[:, :, None, None]))))
        for hook in self._gates_hooks.values():
            hook(self, s)
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused_backward(x):
            dtype = _operator_dtype(x)
            return ops.se_scale(x.to(dtype), None, *self._fc_weights(dtype), self.gate)[0]
        kernels = self._inference_kernels(x)
        if kernels is not None:
            dtype = _operator_dtype(x)
            return ops.se_inference(kernels, x.to(dtype), None, self._fc_weights(dtype), self.gate, False)
        return x * self.gates(x)

    def scale_and_add(
        self, x: torch.Tensor, residual: torch.Tensor, activation: nn.Module | None = None
    ) -> torch.Tensor:
        """``activation(residual + x * gates(x))`` in one pass over memory: the released models' fused "Axpy"
        layer, with the unit's ReLU fused in too where it is a plain ``nn.ReLU`` (a replaced or hooked
        activation is called as it is). Hooks on the block itself see it run as a module: ``self(x)``, then
        the sum."""
        if _has_hooks(self):
            out = residual + self(x)
            return activation(out) if activation is not None else out
        kernels = self._inference_kernels(x)
        if not self._fused_backward(x) and kernels is None:
            out = torch.addcmul(residual, x, self.gates(x))
            return activation(out) if activation is not None else out
        return self._fused_scale_and_add(x, residual, activation, kernels)

    def norm_scale_and_add(
        self, c: torch.Tensor, norm: nn.Module, residual: torch.Tensor, activation: nn.Module | None = None
    ) -> torch.Tensor:
        """``activation(residual + y * gates(y))`` with ``y = norm(c)``: in training, without keeping y.

        Only a plain ``nn.BatchNorm2d`` without hooks is fused: a SyncBatchNorm (its statistics span the DDP
        ranks), a FrozenBatchNorm2d, a subclass, a hooked norm or one whose dtype BatchNorm refuses for c's
        is called as it is, then SE as usual; so is every norm when the block itself is hooked
        (:meth:`scale_and_add`)."""
        if _has_hooks(self):
            return self.scale_and_add(norm(c), residual, activation)
        # an eval BatchNorm is a per-channel affine the kernels apply on the way
        eval_norm = not norm.training and isinstance(c, torch.Tensor) and _is_plain_batch_norm(norm, c)
        kernels = self._inference_kernels(c) if eval_norm else None
        if kernels is not None or self._fuses_norm(c, norm):
            return self._fused_scale_and_add(c, residual, activation, kernels, norm)
        return self.scale_and_add(norm(c), residual, activation)

    def _fused_scale_and_add(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        activation: nn.Module | None,
        kernels: Any | None,
        norm: nn.BatchNorm2d | None = None,
    ) -> torch.Tensor:
        """``activation(residual + y * gates(y))`` on a fused path, ``y = x`` or ``y = norm(x)``: the Triton
        kernels in inference (``kernels`` given; an eval BatchNorm as its affine), else the SE operator in
        training (a BatchNorm in training mode computed by it). A plain ReLU is fused, other activations are
        called on the result."""
        relu = _is_plain_relu(activation)
        dtype = _operator_dtype(x)  # a BatchNorm keeps its fp32 parameters and statistics, as cuDNN's does
        x, residual, weights = x.to(dtype), residual.to(dtype), self._fc_weights(dtype)
        if kernels is not None:
            affine = _eval_norm_affine(norm) if norm is not None else None
            out = ops.se_inference(kernels, x, residual, weights, self.gate, relu, affine)
        elif norm is not None:
            out = _norm_scale_training(norm, x, residual, weights, self.gate, relu)
        else:
            out = ops.se_scale(x, residual, *weights, self.gate, relu)[0]
        return activation(out) if activation is not None and not relu else out

    def _fuses_norm(self, c: torch.Tensor, norm: nn.Module) -> bool:
        """Whether ``norm_scale_and_add`` may compute ``norm`` itself: training a plain BatchNorm2d, and
        ``recompute_norm`` on (default: where the Triton kernels run or on CPU, where it costs no time)."""
        return (
            self._fused_backward(c)
            # native_batch_norm refuses an empty batch (nn.BatchNorm2d passes it through), and one value per
            # channel must reach nn.BatchNorm2d's own error rather than a zero variance
            and c.numel() > c.shape[1]
            and _is_plain_batch_norm(norm, c)
            and norm.training
            # the operator takes both tensors (a user may have set an affine BatchNorm's weight to None)
            and isinstance(norm.weight, torch.Tensor)
            and isinstance(norm.bias, torch.Tensor)
            and norm.momentum is not None
            and (
                self.recompute_norm
                if self.recompute_norm is not None
                else c.device.type == "cpu" or ops.triton_kernels(c) is not None
            )
        )

    def _fc_weights(self, dtype: torch.dtype | None = None) -> list[torch.Tensor | None]:
        weights = [self.fc1.weight.flatten(1), self.fc1.bias, self.fc2.weight.flatten(1), self.fc2.bias]
        return [w.to(dtype) if w is not None and dtype is not None else w for w in weights]

    def _fused_backward(self, x: torch.Tensor) -> bool:
        """Training with the paper's average squeeze: the SE operator (senet.ops), with its hand-written
        backward, in eager, autocast and compiled graphs alike. In eval mode, or without autograd, the plain
        ops are as fast and stay traceable and exportable without senet."""
        return (
            self.squeeze == "avg"
            and self.training
            and torch.is_grad_enabled()
            and isinstance(x, torch.Tensor)  # not a torch.fx proxy being traced
            and self._may_fuse(x)
        )

    def _inference_kernels(self, x: torch.Tensor) -> Any | None:
        """The Triton kernels for eager inference (no autograd) on CUDA, else None: tracing, compiling and
        exporting see the plain ops (inductor fuses those itself; an exported file must not need senet)."""
        if (
            self.squeeze != "avg"
            or torch.is_grad_enabled()
            or not isinstance(x, torch.Tensor)
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
        ):
            return None
        kernels = ops.triton_kernels(
            x
        )  # None on CPU: the cheap test first, the module walk only where it counts
        return kernels if kernels is not None and self._may_fuse(x) else None

    def _may_fuse(self, x: torch.Tensor) -> bool:
        """Whether a fused path computes what the plain ops would: the excitation as built, the block not
        removed, nobody waiting for its gates, and dtypes the plain ops take."""
        return (
            self._plain_excitation()
            and not self.removed
            and not self._gates_hooks
            and self._plain_ops_take(x.dtype, _autocasting(x))
        )

    def _plain_ops_take(self, dtype: torch.dtype, autocasting: bool) -> bool:
        """Whether the plain excitation runs on input of ``dtype``: with the FC weights in that dtype, or
        under autocast (which casts both to its dtype, float64 excepted). Elsewhere (say float64 input into
        an fp32 block) the plain ops raise, and so must the fused paths rather than cast the weights."""
        weights = {w.dtype for w in self._fc_weights() if w is not None}
        if autocasting:
            return dtype != torch.float64 and torch.float64 not in weights
        return weights == {dtype}

    def _plain_excitation(self) -> bool:
        """Whether ``fc1 -> relu -> fc2`` are still the modules this block built, unhooked: only then may a
        fast path compute them from their weights. A wrapper (LoRA, pruning, quantisation), a subclass, or a
        hook of any kind makes every path call the modules in order, as a user who replaced or
        hooked them expects."""
        return (
            all(_is_plain_fc(fc) for fc in (self.fc1, self.fc2))
            and type(self.relu) is nn.ReLU
            and not any(_has_hooks(m) for m in (self.fc1, self.relu, self.fc2))
        )


def _operator_dtype(x: torch.Tensor) -> torch.dtype:
    """The SE operator's dtype: under autocast the autocast dtype (fp16 or bf16, as the user chose), as the
    convolutions around it run; otherwise x's. The layer casts, not a fixed-dtype autocast rule of the op."""
    return torch.get_autocast_dtype(x.device.type) if _autocasting(x) else x.dtype


def _autocasting(x: torch.Tensor) -> bool:
    device = x.device.type
    return device != "meta" and torch.is_autocast_enabled(device)  # meta: autocast has no such device


def _is_plain_relu(module: nn.Module | None) -> bool:
    """A ReLU the SE operator may apply itself: exactly ``nn.ReLU``, no hooks that fusing would skip."""
    return type(module) is nn.ReLU and not _has_hooks(module)


def _is_plain_batch_norm(norm: nn.Module, c: torch.Tensor) -> bool:
    """Exactly ``nn.BatchNorm2d``, unhooked, keeping running statistics, and taking ``c`` as it is: a norm a
    fused path may compute itself (in eval mode a per-channel affine; in training
    :meth:`SqueezeExcite._fuses_norm` asks more)."""
    return (
        type(norm) is nn.BatchNorm2d
        and not _has_hooks(norm)
        and norm.track_running_stats
        and _batch_norm_takes(norm, c.dtype)
    )


def _batch_norm_takes(norm: nn.BatchNorm2d, dtype: torch.dtype) -> bool:
    """Whether ``nn.BatchNorm2d`` itself computes on input of ``dtype``: its tensors in that dtype, or in fp32
    for fp16/bf16 input (as AMP runs it). Elsewhere (say float64 statistics and fp32 input) PyTorch refuses
    the mix, and so must the fused paths: the norm is called as it is and its own error comes through."""
    tensors = (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    dtypes = {t.dtype for t in tensors if isinstance(t, torch.Tensor)}
    return dtypes <= {dtype} or (dtypes == {torch.float32} and dtype in (torch.float16, torch.bfloat16))


def _eval_norm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``norm(c) = a * c + b`` per channel, in fp32 as BatchNorm computes it (the kernels take
    fp16, bf16 and fp32, so the norm's tensors are in one of those: :func:`_batch_norm_takes`)."""
    dtype = torch.float32
    a = torch.rsqrt(norm.running_var.to(dtype) + norm.eps)
    if norm.weight is not None:
        a = a * norm.weight.to(dtype)
    b = -norm.running_mean.to(dtype) * a
    return a, b + norm.bias.to(dtype) if norm.bias is not None else b


def _norm_scale_training(
    norm: nn.BatchNorm2d,
    c: torch.Tensor,
    residual: torch.Tensor,
    weights: list[torch.Tensor | None],
    gate: str,
    relu: bool,
) -> torch.Tensor:
    """The SE operator with the BatchNorm in training (``senet::se_norm_scale``), and the BatchNorm's
    running statistics updated from the batch ones, as ``nn.BatchNorm2d`` does."""
    out, mean, invstd, *_ = ops.se_norm_scale(
        c, residual, norm.weight, norm.bias, norm.eps, *weights, gate, relu
    )
    norm.num_batches_tracked.add_(1)
    count = c.numel() // c.shape[1]
    ops.update_running_stats(
        norm.running_mean, norm.running_var, mean, invstd, norm.eps, count, norm.momentum
    )
    return out


def _is_plain_fc(module: nn.Module) -> bool:
    """A 1x1 convolution exactly as :class:`SqueezeExcite` builds it: the computation
    ``F.linear`` reproduces."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones, forward or backward) that a fused
    path would skip."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or module_globals._global_forward_hooks
        or module_globals._global_forward_pre_hooks
        or module_globals._global_backward_hooks
        or module_globals._global_backward_pre_hooks
    )


@dataclass(frozen=True)
class SEConfig:
    """How a network uses SE blocks: the block's options plus where the family puts them.

    ``position`` (paper Fig. 5, Tables 14-15) and ``stages`` (Table 13) are read by the network families; the
    other fields go to :class:`SqueezeExcite`.

    ``stages`` selects the stages that get SE blocks (``None``: all). A stage number means the same in every
    family: 1 is the first stage after the stem (``layer1`` of a ResNet, the paper's conv2_x), and so on; each
    family documents its stages (docs/ablations.md). The ImageNet ResNets also take the paper's names,
    ``"conv2_x"`` .. ``"conv5_x"``. A single number or name may stand for a tuple. The family that receives
    the config resolves it with :meth:`resolve_stages`, which refuses what it lacks and stores a
    sorted tuple of ints.
    """

    reduction: int = 16
    squeeze: Squeeze = "avg"
    gate: Gate = "sigmoid"
    bias: bool = True
    position: Position = "standard"
    stages: tuple[int | str, ...] | None = None
    recompute_norm: bool | None = None  # see SqueezeExcite; only where SE follows a BatchNorm it can fuse

    def __post_init__(self) -> None:
        # A single stage stands for a one-stage tuple, a list (JSON, the CLI) for a tuple; the family
        # checks them.
        if isinstance(self.stages, (str, numbers.Number)):
            object.__setattr__(self, "stages", (self.stages,))
        elif isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))
        # Fail at build time, in the terms of the se_* build options, rather than deep inside the first block.
        _check_options(
            "SE blocks", "se_", reduction=self.reduction, squeeze=self.squeeze, gate=self.gate,
            bias=self.bias, position=self.position, recompute_norm=self.recompute_norm,
        )  # fmt: skip

    def block(self, channels: int) -> SqueezeExcite:
        return SqueezeExcite(
            channels, self.reduction, self.squeeze, self.gate, self.bias, recompute_norm=self.recompute_norm
        )

    def require_position(self, family: str, allowed: tuple[str, ...] = ("standard",)) -> None:
        """Refuse positions a family does not define (Fig. 5's variants are defined for residual units), and
        ``recompute_norm``, which only residual units whose branch ends in a BatchNorm use."""
        self.require_no_recompute(family)
        if self.position not in allowed:
            raise ValueError(
                f"{family} supports se_position {', '.join(map(repr, allowed))}, got {self.position!r}"
            )

    def require_no_recompute(self, family: str) -> None:
        if self.recompute_norm is not None:
            raise ValueError(
                f"{family} got se_recompute_norm={self.recompute_norm!r}; only post-activation ResNet units "
                "with se_position='standard' end their branch in a BatchNorm that SE can recompute: "
                "leave it out"
            )

    def resolve_stages(
        self,
        family: str,
        stages: Iterable[int],
        names: Mapping[str, int] | None = None,
        meaning: str = "",
    ) -> SEConfig:
        """This config with ``stages`` checked against a family's and resolved to a sorted tuple of ints.

        ``stages``: the family's stage numbers that hold blocks SE can go in (1 = the first after the stem);
        ``names``: the stage names it accepts beside them (``{"conv2_x": 1, ...}`` for the ImageNet ResNets);
        ``meaning``: what its stages are, for the message (e.g. ``"layer1..layer4"``). Refuses, in one line
        that names the valid values: a stage the family lacks, a name it does not have, a stage given twice,
        an empty selection (no SE block at all), bools and other types.
        """
        if self.stages is None:
            return self
        stages = tuple(stages)
        names = dict(names or {})
        valid = ", ".join(map(str, stages)) + (f" ({meaning})" if meaning else "")
        if names:
            valid += " or " + ", ".join(map(repr, names))

        def refuse(problem: str) -> ValueError:
            return ValueError(f"{family} got se_stages={self.stages!r}; {problem}: use {valid}")

        if not isinstance(self.stages, tuple):
            raise refuse("give a stage number, a stage name or a tuple of them")
        if not self.stages:
            raise refuse("it selects no SE block (leave it out for every stage, or use the plain twin)")
        resolved: list[int] = []
        for entry in self.stages:
            if isinstance(entry, str):
                if entry not in names:
                    raise refuse(
                        "the paper's stage names conv2_x..conv5_x are the ImageNet ResNets'"
                        if entry in PAPER_STAGE_NAMES and not names
                        else f"{entry!r} is not a stage name of this network"
                    )
                stage = names[entry]
            elif _is_int(entry):
                stage = int(entry)
            else:
                raise refuse(f"{entry!r} is not a stage number (an int >= 1) or a stage name")
            if stage not in stages:
                raise refuse(f"there is no stage {stage}")
            if stage in resolved:
                raise refuse(f"stage {stage} is selected twice")
            resolved.append(stage)
        return replace(self, stages=tuple(sorted(resolved)))

    def in_stage(self, stage: int) -> bool:
        """Whether the blocks of ``stage`` get SE; only on a config the family
        resolved (:meth:`resolve_stages`)."""
        if self.stages is not None and not all(_is_int(s) and s >= 1 for s in self.stages):
            raise RuntimeError(
                f"se_stages={self.stages!r} was not resolved by the family: call resolve_stages"
            )
        return self.stages is None or stage in self.stages

    def check_built(self, family: str, model: nn.Module) -> None:
        """After the family built ``model``: it holds an SE block (a backstop
        behind :meth:`resolve_stages`)."""
        if not any(isinstance(m, SqueezeExcite) for m in model.modules()):
            raise ValueError(f"{family} built no SE block with se_stages={self.stages!r}; use its plain twin")

    @classmethod
    def pop_from(cls, options: dict[str, Any], enabled: bool) -> SEConfig | None:
        """Take the ``se_*`` build options (``se_reduction=8``, ``se_stages=(1, 2)``...) out of ``options``.

        Returns ``None`` for a network without SE, and refuses SE options given to one.
        """
        given = {f.name: options.pop(f"se_{f.name}") for f in fields(cls) if f"se_{f.name}" in options}
        if not enabled:
            if given:
                names = ", ".join(f"se_{k}" for k in given)
                raise ValueError(f"{names} given to a network without SE blocks; use its se_ twin")
            return None
        return replace(cls(), **given)


# The paper's names of the ImageNet ResNet stages (Table 1; Table 13's "SE Stage 2/3/4" are conv2_x..conv4_x).
PAPER_STAGE_NAMES: dict[str, int] = {"conv2_x": 1, "conv3_x": 2, "conv4_x": 3, "conv5_x": 4}
