"""``senet.add_se``: SE blocks inserted into a network that is not ours, by a ``torch.fx`` transform.

The paper integrates SE blocks into existing architectures (Sec. 4): in a residual network on the output of
each residual branch, before the summation with the identity (Fig. 3, the SE-ResNet module); on the output of
a whole module (Fig. 2, the SE-Inception module); in a plain network (VGG) after the non-linearity that
follows each convolution: ``where="residual"``, ``where=[module names]`` (or a callable) and ``where="conv"``.

:func:`add_se` does that to a model it has never seen: it traces the model with ``torch.fx``, finds the
insertion points in the graph (additions of a residual branch to its shortcut, or conv -> norm -> activation
chains, or modules the caller names), inserts our :class:`~senet.layers.SqueezeExcite` blocks as
``call_module`` nodes and returns a :class:`torch.fx.GraphModule`. Every original state-dict key stays as it
was, so the plain network's weights load with ``strict=False`` (only the new ``<block>.se.fc1`` /
``<block>.se.fc2`` keys missing); the SE blocks are graph nodes, not hooks, so a later ``torch.fx`` pass
(``senet.optimize_for_inference`` folds BatchNorms through one) keeps them.

``torchvision:NAME`` models with SE blocks (``create_model("torchvision:resnet50", add_se=True)``) are built
by :mod:`senet.models.torchvision_models`, which applies :func:`add_se`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import itertools
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from senet.fileio import first_line
from senet.layers.squeeze_excite import SqueezeExcite

WHERE_MODES = ("residual", "conv")
INITS = ("paper", "identity")
_GATE_OF_INIT = {"paper": "sigmoid", "identity": "2sigmoid"}
_CONFIG_ATTRIBUTE = "add_se_config"

Where = str | Sequence[str] | Callable[[str, nn.Module], bool]

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_}
_ADD_METHODS = {"add", "add_"}
_CONV_FUNCTIONS = {torch.conv2d, nn.functional.conv2d}
_ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
)
_ACTIVATION_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.silu,
    nn.functional.gelu,
    nn.functional.hardswish,
    nn.functional.leaky_relu,
    nn.functional.elu,
    nn.functional.mish,
}
_ACTIVATION_METHODS = {"relu", "relu_"}
# Other projects' SE blocks (timm's SEModule / SqueezeExcite / EffectiveSEModule, pretrainedmodels' SEModule,
# torchvision's SqueezeExcitation, common SELayer / SEBlock spellings), recognised by their class names.
_SE_CLASS_NAME = re.compile(r"squeeze_?excit|^(effective)?se(module|layer|block)$", re.IGNORECASE)


def add_se(
    model: nn.Module,
    reduction: int = 16,
    where: Where = "residual",
    init: str = "paper",
    *,
    input_size: int | tuple[int, int] = 224,
    copy_model: bool = True,
) -> fx.GraphModule:
    """``model`` with SE blocks (paper Sec. 3) inserted as the paper integrates them (Sec. 4, Figs. 2-3).

    Args:
        model: any traceable ``nn.Module`` of 2-D convolutions (torchvision ResNet / ResNeXt / Wide ResNet,
            VGG, MobileNetV2, a user's ``nn.Sequential``...). It is left untouched: the result is a copy.
        reduction: r, the excitation's bottleneck ratio (hidden width ``C // r``, at least 1); 16 in the
            paper.
        where: ``"residual"``: on the output of each residual branch, before its sum with the shortcut (the
            SE-ResNet module, Fig. 3). Additions are found in the ``torch.fx`` graph, never by class names:
            the branch is the addend that is not an ancestor of the other, or, where neither is, the one with
            more convolutions back to their common input; the block is the module whose ``forward`` adds.
            ``"conv"``: after each conv block (conv -> optional norm -> optional activation) of a plain
            network (VGG, a ``nn.Sequential``). A callable ``(name, module) -> bool`` or a list of module
            names: the outputs of those modules are rescaled (each call of a module called twice gets its own
            block), and the modules are kept whole by the trace (control flow inside them is no obstacle).
        init: ``"paper"``: the paper's SE block (sigmoid gate, biases, He-initialised FCs). ``"identity"``:
            the gate is ``2 * sigmoid`` and ``fc2`` starts at zero, so every block starts as the identity and
            a trained plain network keeps its outputs exactly when fine-tuning begins.
        input_size: the side (or (H, W)) of the example input whose shapes are propagated (``torch.fx``'s
            ShapeProp on the meta device: nothing is computed) to find each block's channel count; the number
            of input channels is the first convolution's.
        copy_model: ``False`` saves copying ``model``: the result then shares its modules and tensors, so use
            it only where ``model`` itself is not used afterwards
            (``model = add_se(model, copy_model=False)``).

    Returns:
        A :class:`torch.fx.GraphModule` with the original state-dict keys and, for each block, the new keys
        ``<block>.se.fc1.*`` / ``<block>.se.fc2.*`` (``se_1``, ``se_2``... where one module gets several):
        ``<block>`` is the residual unit for ``"residual"`` and the module whose output is rescaled otherwise.
        ``model.add_se_config`` records the options (``where`` as the mode or the list of names a callable
        chose), so the same network can be rebuilt. Modules keep their names but the containers among them
        become plain ``nn.Module``s of the graph module: call the model, not its parts.

    Refused, with one line saying why and what to pass instead: a model that has SE blocks already (ours,
    torchvision's ``SqueezeExcitation``, timm's), one ``torch.fx`` cannot trace, one whose ``forward`` takes
    a different path in training and evaluation (fx would freeze one), one where no insertion point is found.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"add_se needs an nn.Module, got {type(model).__name__}")
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"add_se got reduction={reduction!r}; use an integer >= 1 (paper: 16)")
    if init not in INITS:
        raise ValueError(f"add_se got init={init!r}; choose one of {', '.join(INITS)}")
    size = _input_size(input_size)
    _refuse_existing_se(model)
    original_keys = list(model.state_dict())
    names = _selected_names(model, where)
    if copy_model:
        model = copy.deepcopy(model)  # the caller's model is left as it was
    graph = _trace(model, set(names or ()))
    gm = fx.GraphModule(model, graph, class_name=f"SE{type(model).__name__}")
    label = type(model).__name__
    conv = _first_conv(gm, model)
    _propagate_shapes(gm, conv, size, label)
    if names is not None:
        points = _named_points(gm, names)
    elif where == "residual":
        points = _residual_points(gm, label)
    else:
        points = _conv_points(gm, label)
    gate = _GATE_OF_INIT[init]
    blocks = _insert(gm, model, points, reduction, gate, init, conv.weight)
    _restore_unused(gm, model)
    _check_keys(gm, original_keys, blocks, label)
    config = {
        "reduction": reduction,
        "where": list(names) if names is not None else where,
        "init": init,
        "gate": gate,
        "input_size": list(size),
        "blocks": blocks,
    }
    setattr(gm, _CONFIG_ATTRIBUTE, config)
    # GraphModule's deepcopy keeps only attributes listed here (torch.fx's user-preserved attributes).
    gm.meta.setdefault(fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY, {})[_CONFIG_ATTRIBUTE] = config
    return gm


# ------------------------------------------------------------------------------------------------- checks


def _input_size(size: Any) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair)
    ):
        raise ValueError(f"add_se got input_size={size!r}; use a side >= 1 or (height, width)")
    return int(pair[0]), int(pair[1])


def _refuse_existing_se(model: nn.Module) -> None:
    from torchvision.ops import SqueezeExcitation

    for name, module in model.named_modules():
        if isinstance(module, (SqueezeExcite, SqueezeExcitation)) or _SE_CLASS_NAME.search(
            type(module).__name__
        ):
            where = f"{name!r} is a {type(module).__name__}" if name else f"it is a {type(module).__name__}"
            raise ValueError(
                f"add_se refuses {type(model).__name__}: it has SE blocks already ({where}); use it as it "
                "is, or add_se to its plain twin"
            )


def _selected_names(model: nn.Module, where: Where) -> list[str] | None:
    """The module names ``where`` selects (None for the modes ``"residual"`` / ``"conv"``), checked."""
    if isinstance(where, str):
        if where not in WHERE_MODES:
            raise ValueError(
                f"add_se got where={where!r}; choose {' or '.join(map(repr, WHERE_MODES))}, a list of module "
                "names or a callable(name, module) -> bool"
            )
        return None
    modules = dict(model.named_modules())
    if callable(where):
        names = [name for name, module in modules.items() if name and where(name, module)]
        if not names:
            raise ValueError(
                f"add_se: where={getattr(where, '__name__', where)!r} selected none of the "
                f"{len(modules) - 1} modules of {type(model).__name__}; it is called as where(name, module)"
            )
    elif isinstance(where, (list, tuple)) and all(isinstance(n, str) for n in where):
        names = list(where)
        if not names:
            raise ValueError("add_se got where=[]; name at least one module whose output SE rescales")
    else:
        raise ValueError(
            f"add_se got where={where!r}; choose 'residual', 'conv', a list of module names or a "
            "callable(name, module) -> bool"
        )
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else "see model.named_modules()"
            raise ValueError(f"add_se: {type(model).__name__} has no module {name!r}; {hint}")
    if len(set(names)) != len(names):
        raise ValueError(f"add_se: where names a module twice: {names!r}")
    for name in names:
        outer = next((o for o in names if name.startswith(o + ".")), None)
        if outer is not None:
            raise ValueError(
                f"add_se: where selects {name!r} inside {outer!r}, which is kept whole; select one of them"
            )
    return names


# ---------------------------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the modules ``where`` names kept whole (leaves of the graph), and those without
    a convolution too: they hold no insertion point, and their Python (stochastic depth's training switch, a
    custom norm's checks) stays theirs."""

    def __init__(self, keep_whole: set[str] | frozenset[str] = frozenset()) -> None:
        super().__init__()  # the default: GraphModule's unpickling traces again with this class
        self.keep_whole = keep_whole

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.keep_whole
            or super().is_leaf_module(m, module_qualified_name)
            or not any(isinstance(child, nn.modules.conv._ConvNd) for child in m.modules())
        )


def _trace(model: nn.Module, keep_whole: set[str]) -> fx.Graph:
    """The graph of ``model.forward`` in its current mode; refused where fx cannot trace it, or where training
    and evaluation trace differently (fx would freeze the Python branch taken now)."""
    modes = {m: m.training for m in model.modules()}
    graphs = []
    try:
        for flip in (False, True):
            if flip:  # every module in the other mode
                model.train(not model.training)
            tracer = _Tracer(keep_whole)
            try:
                graphs.append(tracer.trace(model))
            except Exception as error:  # fx's tracing errors have no common type (TraceError, TypeError...)
                inside = [path for path, _ in tracer.module_stack.values() if path]
                message = first_line(error)
                if inside:
                    fix = (
                        f"pass where=[names] (or a callable) selecting {inside[-1]!r} or a module holding "
                        "it: the modules selected are kept whole, so control flow inside them is no obstacle"
                    )
                else:
                    fix = "the fault is in its own forward: insert senet.SqueezeExcite blocks by hand"
                where = f" in {inside[-1]!r}" if inside else ""
                raise ValueError(
                    f"add_se cannot trace {type(model).__name__} with torch.fx{where} ({message}); {fix}"
                ) from None
    finally:
        for module, training in modes.items():
            module.train(training)
    if graphs[0].python_code("self").src != graphs[1].python_code("self").src:
        raise ValueError(
            f"add_se refuses {type(model).__name__}: its forward takes another path in training than in "
            "evaluation (e.g. auxiliary heads), which torch.fx would freeze; pass where=[names] selecting "
            "modules that hold those branches, which are kept whole"
        )
    return graphs[0]


def _first_conv(gm: fx.GraphModule, model: nn.Module) -> nn.Conv2d:
    """The first 2-D convolution the forward calls (else the first one registered): its input channels are
    the network's."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
            return gm.get_submodule(node.target)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(
            f"add_se: {type(model).__name__} has no nn.Conv2d; SE blocks recalibrate the channels of "
            "convolutional feature maps"
        )
    return conv


def _propagate_shapes(gm: fx.GraphModule, conv: nn.Conv2d, size: tuple[int, int], label: str) -> None:
    """Every node's ``meta["tensor_meta"]`` from a (1, C, H, W) example (torch.fx's ShapeProp), in evaluation
    mode: on the meta device (shapes only, no arithmetic, nothing written to BatchNorm statistics), or, where
    a module kept whole looks at values, with a real zero input (no gradients)."""
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in gm.modules()}
    shape = (1, conv.in_channels, *size)
    try:
        gm.eval()
        # ShapeProp prints the traceback of a failing node before raising: the message below says it
        # in one line.
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                with _on_meta(gm):
                    ShapeProp(gm).propagate(torch.empty(shape, device="meta", dtype=conv.weight.dtype))
            except Exception:
                if conv.weight.is_meta:
                    raise
                with torch.no_grad():
                    example = torch.zeros(shape, device=conv.weight.device, dtype=conv.weight.dtype)
                    ShapeProp(gm).propagate(example)
    except Exception as error:  # any operator may refuse the size
        cause = error.__cause__ or error  # ShapeProp wraps the node's error in its own
        message = first_line(cause)
        raise ValueError(
            f"add_se: a {shape} input does not go through {label} ({message}); pass the input_size the "
            "network takes"
        ) from None
    finally:
        for module, training in modes.items():
            module.train(training)


@contextlib.contextmanager
def _on_meta(model: nn.Module) -> Iterator[None]:
    """Every parameter and buffer of ``model`` replaced by a meta tensor of its shape, then put back: a
    forward pass of shapes alone, without copying the model (a tensor shared by two modules stays shared)."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    meta: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for key, tensor in slots.items():
                if tensor is None:
                    continue
                if id(tensor) not in meta:
                    shadow = torch.empty_like(tensor, device="meta")
                    meta[id(tensor)] = (
                        nn.Parameter(shadow, tensor.requires_grad)
                        if isinstance(tensor, nn.Parameter)
                        else shadow
                    )
                saved.append((slots, key, tensor))
                slots[key] = meta[id(tensor)]
    try:
        yield
    finally:
        for slots, key, tensor in saved:
            slots[key] = tensor


# ----------------------------------------------------------------------------------------- insertion points


class _Point:
    """One SE block to insert: after ``anchor``, named ``<owner>.se``; ``consumer``: the one node that gets
    the rescaled value (the residual sum), or None for every user of ``anchor``."""

    def __init__(self, anchor: fx.Node, owner: str, consumer: fx.Node | None = None) -> None:
        self.anchor, self.owner, self.consumer = anchor, owner, consumer


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.modules.conv._ConvNd)
    return node.op == "call_function" and node.target in _CONV_FUNCTIONS


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node it depends on."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def _owner(node: fx.Node) -> str:
    """The innermost module whose forward created ``node`` ("" for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _addends(node: fx.Node) -> tuple[Any, Any] | None:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return node.args[:2] if len(node.args) >= 2 else None
    if node.op == "call_method" and node.target in _ADD_METHODS and len(node.args) >= 2:
        return node.args[0], node.args[1]
    return None


def _residual_points(gm: fx.GraphModule, label: str) -> list[_Point]:
    """Each addition of a residual branch to its shortcut (Fig. 3): SE on the branch, before the sum."""
    points = []
    for node in gm.graph.nodes:
        addends = _addends(node)
        if addends is None or not all(isinstance(a, fx.Node) for a in addends):
            continue
        a, b = addends
        above_a, above_b = _ancestors(a), _ancestors(b)
        common = above_a & above_b
        if not any(n.op == "placeholder" for n in common):
            continue  # not two paths from one input (e.g. x + a parameter)
        convs_a = sum(_is_conv(gm, n) for n in above_a - above_b)
        convs_b = sum(_is_conv(gm, n) for n in above_b - above_a)
        if a in above_b:  # b is computed from a: a is the shortcut
            branch, convs = b, convs_b
        elif b in above_a:
            branch, convs = a, convs_a
        elif convs_a != convs_b:
            branch, convs = (a, convs_a) if convs_a > convs_b else (b, convs_b)
        else:
            continue  # two symmetric paths: no residual branch to tell apart
        shape = _shape(branch)
        if convs == 0 or shape is None or len(shape) != 4:
            continue
        points.append(_Point(branch, _owner(node), node))
    if not points:
        raise ValueError(
            f"add_se found no residual addition (a convolutional branch added to its shortcut) in "
            f"{label}; pass where='conv' for a plain network, or where=[names] / a callable "
            "choosing the modules whose outputs SE rescales"
        )
    return points


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args[:1] == (node,) else None


def _is_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    from torchvision.ops import FrozenBatchNorm2d

    norms = (
        nn.modules.batchnorm._BatchNorm,
        nn.GroupNorm,
        nn.modules.instancenorm._InstanceNorm,
        FrozenBatchNorm2d,
    )
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), norms)


def _is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def _conv_points(gm: fx.GraphModule, label: str) -> list[_Point]:
    """Each conv block (conv -> optional norm -> optional activation) of a plain network: SE after it,
    named after its last module (VGG's ``features.2.se``: the ReLU at ``features.2``, as our SE-VGG-16)."""
    points = []
    for node in gm.graph.nodes:
        if not (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)):
            continue
        chain = [node]
        for test in (_is_norm, _is_activation):
            following = _single_user(chain[-1])
            if following is not None and test(gm, following):
                chain.append(following)
        modules = [n for n in chain if n.op == "call_module"]
        shape = _shape(chain[-1])
        if shape is not None and len(shape) == 4:
            points.append(_Point(chain[-1], modules[-1].target))
    if not points:
        raise ValueError(
            f"add_se found no conv block with a 4-D output in {label}; pass where=[names] or a "
            "callable choosing the modules whose outputs SE rescales"
        )
    return points


def _named_points(gm: fx.GraphModule, names: list[str]) -> list[_Point]:
    """Each call of the modules ``where`` named (kept whole by the trace): SE on its output."""
    calls: dict[str, list[fx.Node]] = {name: [] for name in names}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in calls:
            calls[node.target].append(node)
    points = []
    for name in names:
        if not calls[name]:
            raise ValueError(f"add_se: module {name!r} is never called by the forward; select another")
        for node in calls[name]:
            shape = _shape(node)
            if shape is None or len(shape) != 4:
                got = f"of shape {tuple(shape)}" if shape is not None else "that is not one tensor"
                raise ValueError(
                    f"add_se: module {name!r} returns a value {got}; SE rescales (N, C, H, W) feature maps: "
                    "select modules inside the convolutional part"
                )
            points.append(_Point(node, name))
    return points


# --------------------------------------------------------------------------------------------- insertion


def _insert(
    gm: fx.GraphModule,
    model: nn.Module,
    points: list[_Point],
    reduction: int,
    gate: str,
    init: str,
    like: torch.Tensor,
) -> list[str]:
    """Insert one SqueezeExcite per point; returns their names, in graph order."""
    names: list[str] = []
    for point in points:
        name = _free_name(gm, model, point.owner, names)
        channels = _shape(point.anchor)[1]
        block = SqueezeExcite(channels, reduction, gate=gate).to(device=like.device, dtype=like.dtype)
        _init_block(block, init)
        block.train(gm.training)
        gm.add_submodule(name, block)
        with gm.graph.inserting_after(point.anchor):
            se = gm.graph.call_module(name, (point.anchor,))
        if point.consumer is not None:
            point.consumer.replace_input_with(point.anchor, se)
        else:
            point.anchor.replace_all_uses_with(se, delete_user_cb=lambda user, se=se: user is not se)
        names.append(name)
    gm.graph.lint()
    gm.recompile()
    return names


def _free_name(gm: fx.GraphModule, model: nn.Module, owner: str, taken: list[str]) -> str:
    """``<owner>.se``, or ``se_1``, ``se_2``... where that name is taken: by a block inserted before, an
    attribute of the graph module's ``owner``, or a module or tensor of the original ``owner`` (one the
    forward never uses is put back later). A plain attribute of the original (our plain units' ``se = None``)
    is no obstacle where the graph module has its own container."""
    held = []
    for root in (gm, model):
        try:
            held.append(root.get_submodule(owner))
        except AttributeError:  # the graph module lacks a container the forward never enters
            pass
    prefix = f"{owner}." if owner else ""
    for k in itertools.count():
        leaf = "se" if k == 0 else f"se_{k}"
        if prefix + leaf in taken or (held and hasattr(held[0], leaf)):
            continue
        if any(leaf in m._modules or leaf in m._parameters or leaf in m._buffers for m in held):
            continue
        return prefix + leaf
    raise AssertionError("unreachable")


@torch.no_grad()
def _init_block(block: SqueezeExcite, init: str) -> None:
    """He (fan-out) initialisation of both FCs, zero biases, as our SE networks (models.base.init_weights);
    ``"identity"``: fc2 zero too, so the 2 * sigmoid gate is exactly 1."""
    for fc in (block.fc1, block.fc2):
        nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(fc.bias)
    if init == "identity":
        nn.init.zeros_(block.fc2.weight)


def _restore_unused(gm: fx.GraphModule, model: nn.Module) -> None:
    """Put back what the graph module did not copy because the forward never uses it (modules, parameters and
    buffers of containers), and the persistence of buffers, so its state dict keeps every original key."""
    for name, module in model.named_modules():
        try:
            target = gm.get_submodule(name)
        except AttributeError:
            parent, _, child = name.rpartition(".")
            gm.get_submodule(parent).add_module(child, module)
            continue
        if target is module:
            continue
        for key, parameter in module._parameters.items():
            if key not in target._parameters and parameter is not None:
                target.register_parameter(key, parameter)
        for key, buffer in module._buffers.items():
            if key not in target._buffers and buffer is not None:
                target.register_buffer(key, buffer, persistent=key not in module._non_persistent_buffers_set)
            elif key in module._non_persistent_buffers_set:
                target._non_persistent_buffers_set.add(key)


def _check_keys(gm: fx.GraphModule, original: list[str], blocks: list[str], label: str) -> None:
    keys = set(gm.state_dict())
    missing = sorted(set(original) - keys)
    extra = sorted(k for k in keys - set(original) if not any(k.startswith(b + ".") for b in blocks))
    if missing or extra:  # a model arrangement this function does not foresee: say so rather than misload
        raise ValueError(
            f"add_se could not keep the state-dict keys of {label} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); pass where=[names] choosing the modules to "
            "rescale"
        )
