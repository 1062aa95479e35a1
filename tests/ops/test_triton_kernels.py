"""The SE operators through their Triton kernels (the CUDA path), run on CPU by Triton's interpreter.

Each case is checked against the plain functional ops in float64 on the same values: NCHW and channels_last,
odd channel counts (not a power of two, more than one block), H*W = 1, N = 1, a residual in another layout,
the fused ReLU, fp32, fp16 and bf16."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from packaging.version import Version

from senet.ops import SEKernelError
from senet.ops import squeeze_excite as ops

triton = pytest.importorskip("triton")  # tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU
if (
    not torch.cuda.is_available()
    and Version(triton.__version__) < Version("3.7")
    and Version(np.__version__) >= Version("2.4")
):  # seen with Triton 3.6 (the GPU machines' version) beside NumPy 2.4: every kernel with a loop fails there
    pytest.skip(
        "Triton < 3.7's interpreter fails under NumPy >= 2.4 (it takes int() of a 1-element array); "
        "install numpy<2.4 or triton>=3.7 to run the kernels on CPU",
        allow_module_level=True,
    )

GATES = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}
SHAPES = [(2, 5, 3, 7), (1, 70, 4, 4), (3, 6, 1, 1)]


@pytest.fixture(autouse=True)
def triton_on_this_device(monkeypatch):
    monkeypatch.setattr(ops, "TRITON_DEVICES", {"cuda", DEVICE})
    kernels = ops.triton_kernels(torch.empty(1, device=DEVICE))
    if DEVICE == "cpu":
        assert type(kernels._scale_kernel).__name__ == "InterpretedFunction"
    return kernels


def _leaves(shape, dtype, channels_last, residual_layout, hidden=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]

    def make(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(dtype).to(DEVICE)

    x, residual = make(*shape), make(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if residual_layout == "channels_last":
        residual = residual.contiguous(memory_format=torch.channels_last)
    weights = [
        make(hidden, channels, scale=0.5),
        make(hidden),
        make(channels, hidden, scale=0.5),
        make(channels),
    ]
    return [t.requires_grad_() for t in (x, residual, *weights)]


def _reference(x, residual, w1, b1, w2, b2, gate, relu, norm=None):
    """Eqs. 2-4 (after a training-mode BatchNorm when ``norm`` is given), in float64."""
    x, residual, w1, b1, w2, b2 = (t.double() for t in (x, residual, w1, b1, w2, b2))
    if norm is not None:
        x = F.batch_norm(x, None, None, norm[0].double(), norm[1].double(), training=True, eps=1e-5)
    s = GATES[gate](F.linear(F.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2))
    out = residual + x * s[:, :, None, None]
    return out.relu() if relu else out


def _check(out, expected, leaves, dtype):
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    got = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    want = torch.autograd.grad(expected, leaves, grad_out.double())
    # the names cover the longest list of leaves (residual and BatchNorm included): shorter lists stop early
    names = ("x", "residual", "w1", "b1", "w2", "b2", "bn_weight", "bn_bias")
    for name, a, b in zip(names, got, want, strict=False):
        # gradients are sums over N*H*W terms: compare relative to their scale
        scale = b.abs().max().item() + 1
        torch.testing.assert_close(a.double(), b.double(), rtol=tolerance, atol=tolerance * scale, msg=name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_se_scale_kernels_match_the_plain_ops(shape, channels_last, relu):
    leaves = _leaves(shape, torch.float32, channels_last, "contiguous")
    out = ops.se_scale(leaves[0], leaves[1], *leaves[2:], "sigmoid", relu)[0]
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _check(out, _reference(*leaves, "sigmoid", relu), leaves, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", ["tanh", "relu"])
def test_se_scale_kernels_in_half_precision_without_residual(dtype, gate):
    x, _, *weights = _leaves((2, 6, 5, 3), dtype, True, "contiguous")
    out = ops.se_scale(x, None, *weights, gate, False)[0]
    assert out.dtype == dtype
    expected = _reference(x, torch.zeros_like(x), *weights, gate, False)
    _check(out, expected, [x, *weights], dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_se_norm_scale_kernels_match_batchnorm_then_se(shape, channels_last, dtype):
    if shape[0] * shape[2] * shape[3] == 1:
        pytest.skip("BatchNorm needs more than one value per channel")
    c, residual, *weights = _leaves(
        shape, dtype, channels_last, "contiguous" if channels_last else "channels_last"
    )
    bn_weight = (torch.rand(shape[1]) + 0.5).to(DEVICE).requires_grad_()
    bn_bias = torch.randn(shape[1]).to(DEVICE).requires_grad_()
    out, mean, invstd, *_ = ops.se_norm_scale(
        c, residual, bn_weight, bn_bias, 1e-5, *weights, "sigmoid", True
    )
    c64 = c.double()
    torch.testing.assert_close(mean.double(), c64.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    var = c64.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(invstd.double(), (var + 1e-5).rsqrt(), rtol=1e-4, atol=1e-4)
    expected = _reference(c, residual, *weights, "sigmoid", True, norm=(bn_weight, bn_bias))
    _check(out, expected, [c, residual, *weights, bn_weight, bn_bias], dtype)


def test_batch_statistics_stay_exact_when_the_mean_dwarfs_the_spread():
    # E[x^2] - E[x]^2 in fp32 would lose every digit of a variance of 1e-4 under a mean of 100.
    c = (100 + 0.01 * torch.randn(4, 3, 6, 6, dtype=torch.float64)).float().to(DEVICE)
    _, residual, *weights = _leaves(c.shape, torch.float32, False, "contiguous")
    bn = torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE)
    _, mean, invstd, *_ = ops.se_norm_scale(c, residual, *bn, 1e-5, *weights, "sigmoid", False)
    var = c.double().var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(invstd.double(), (var + 1e-5).rsqrt(), rtol=1e-4, atol=0)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA only: the interpreter runs each program in turn")
def test_the_kernels_are_deterministic_bit_for_bit():
    results = []
    for _ in range(2):
        leaves = _leaves((2, 70, 5, 5), torch.float32, True, "contiguous")
        out = ops.se_scale(leaves[0], leaves[1], *leaves[2:], "sigmoid", True)[0]
        results.append((out, *torch.autograd.grad(out.square().sum(), leaves)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_an_empty_batch_goes_through(triton_on_this_device):
    x, residual, *weights = _leaves((0, 6, 4, 4), torch.float32, False, "contiguous")
    out = ops.se_scale(x, residual, *weights, "sigmoid", True)[0]
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape


def test_a_training_step_of_a_model_through_the_kernels_equals_the_pytorch_path(monkeypatch):
    import senet

    def step(model):
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).square().sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    model = senet.create_model("se_resnet18", num_classes=3, widths=(4, 8, 8, 8))
    reference = senet.create_model("se_resnet18", num_classes=3, widths=(4, 8, 8, 8))
    reference.load_state_dict(model.state_dict())
    calls = []
    original = ops.triton_kernels
    monkeypatch.setattr(ops, "triton_kernels", lambda x: calls.append(x.shape) or original(x))
    grads = step(model)
    assert len(calls) >= 2 * 8  # every unit's forward and backward took the Triton kernels
    monkeypatch.setattr(ops, "triton_kernels", lambda x: None)
    reference_grads = step(reference)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(model.layer1[0].bn2.running_var, reference.layer1[0].bn2.running_var)


def test_torch_opcheck_accepts_the_kernel_path():
    # The fake kernels must promise what the Triton implementations return (layouts, stats dtypes) and the
    # autograd formula must agree with numerical checks, on this path too.
    x, residual, *weights = _leaves((2, 6, 3, 3), torch.float32, True, "contiguous")
    torch.library.opcheck(torch.ops.senet.se_scale.default, (x, residual, *weights, "sigmoid", True))
    bn = (torch.rand(6) + 0.5).to(DEVICE).requires_grad_(), torch.randn(6).to(DEVICE).requires_grad_()
    torch.library.opcheck(
        torch.ops.senet.se_norm_scale.default, (x, residual, *bn, 1e-5, *weights, "tanh", False)
    )


def test_amp_training_goes_through_the_operator_in_the_autocast_dtype(monkeypatch):
    import senet

    dtype = torch.float16 if DEVICE == "cuda" else torch.bfloat16
    calls = []
    original = ops.se_norm_scale
    monkeypatch.setattr(ops, "se_norm_scale", lambda c, *args: calls.append(c.dtype) or original(c, *args))
    model = senet.create_model("se_resnet18", num_classes=3, widths=(4, 8, 8, 8)).to(DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        loss = model(torch.randn(2, 3, 32, 32, device=DEVICE)).float().square().sum()
    loss.backward()
    assert calls == [dtype] * 8  # every unit: BatchNorm, SE, the sum and the ReLU in one operator
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert model.layer1[0].bn2.num_batches_tracked.item() == 1


def test_the_same_tensor_as_input_and_residual_is_added_by_the_kernels():
    x, _, *weights = _leaves((2, 6, 3, 3), torch.float32, False, "contiguous")
    for relu in (False, True):
        out = ops.se_scale(x, x, *weights, "sigmoid", relu)[0]
        _check(out, _reference(x, x, *weights, "sigmoid", relu), [x, *weights], torch.float32)
    bn = (torch.rand(6) + 0.5).to(DEVICE), torch.randn(6).to(DEVICE)
    out = ops.se_norm_scale(x, x, *bn, 1e-5, *weights, "sigmoid", True)[0]
    normed = F.batch_norm(x.double(), None, None, bn[0].double(), bn[1].double(), training=True, eps=1e-5)
    expected = _reference(normed, x, *weights, "sigmoid", True)  # the residual is the un-normalised x
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_the_backward_kernels_mask_by_the_relu_output_even_when_it_is_the_gradient(triton_on_this_device):
    kernels = triton_on_this_device
    g = torch.randn(2, 6, 3, 3, device=DEVICE)
    x = torch.randn(2, 6, 3, 3, device=DEVICE)
    masked = torch.where(g > 0, g, 0)
    g_sum, gx_sum = kernels.grad_sums(g, g, x)  # out is grad: the ReLU was still fused
    torch.testing.assert_close(g_sum, masked.sum((2, 3)))
    torch.testing.assert_close(gx_sum, (masked * x).sum((2, 3)))
    p, r = torch.rand(2, 6, device=DEVICE), torch.randn(2, 6, device=DEVICE)
    dx, dres = kernels.grad_apply(g, g, x, p, None, r, True)
    torch.testing.assert_close(dx, masked * p[..., None, None] + r[..., None, None])
    torch.testing.assert_close(dres, masked)


def test_inference_goes_through_the_kernels_and_equals_the_plain_ops(monkeypatch, triton_on_this_device):
    import senet
    from senet.ops import use_triton_kernels

    launches = []
    original = triton_on_this_device._launch
    monkeypatch.setattr(
        triton_on_this_device, "_launch", lambda k, *a, **c: launches.append(k) or original(k, *a, **c)
    )
    model = senet.create_model("se_resnet18", num_classes=3, widths=(4, 8, 8, 8)).eval().to(DEVICE)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)  # statistics away from (0, 1), so the affine is really applied
        bn.running_var.uniform_(0.5, 2)
    images = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        fused = model(images)
        se = model.layer2[0].se
        single = se(images[:, :1].expand(2, 8, 32, 32).contiguous())
        use_triton_kernels(False)
        try:
            plain = model(images)
            plain_single = se(images[:, :1].expand(2, 8, 32, 32).contiguous())
        finally:
            use_triton_kernels(True)
    # every unit: the squeeze's pass and the output's (BatchNorm, SE, sum and
    # ReLU in one), then the lone block
    assert len(launches) == 2 * 8 + 2
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, plain_single, rtol=1e-5, atol=1e-5)


def test_the_switch_turns_the_kernels_off_from_the_environment(monkeypatch):
    import importlib

    from senet.ops import triton_switch

    x = torch.empty(2, 3, 4, 4, device=DEVICE)
    assert ops.triton_kernels(x) is not None
    try:
        for spelling in ("0", "off", "False"):
            monkeypatch.setenv("SENET_TRITON", spelling)
            importlib.reload(triton_switch)
            assert ops.triton_kernels(x) is None
        monkeypatch.setenv("SENET_TRITON", "banana")  # neither on nor off: refused, not taken as on
        importlib.reload(triton_switch)
        with pytest.raises(ValueError, match=r"^SENET_TRITON='banana' is neither on nor off: set it to 0"):
            ops.triton_kernels(x)
    finally:
        monkeypatch.delenv("SENET_TRITON")
        importlib.reload(triton_switch)
    assert ops.triton_kernels(x) is not None


@pytest.fixture
def broken_scale_kernel(monkeypatch, triton_on_this_device):
    """The rescale kernel replaced by one that fails as a compiler does on an unsupported GPU."""

    class Broken:
        fn = triton_on_this_device._scale_kernel.fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError(
                    "at 12:4:\n    out = x * p\n        ^\nPTX .version 9.9 does not support sm_100"
                )

            return launch

    monkeypatch.setattr(triton_on_this_device, "_scale_kernel", Broken())


def test_a_kernel_that_fails_stops_with_one_line_naming_it_and_the_switch(broken_scale_kernel):
    x, residual, *weights = _leaves((2, 6, 3, 3), torch.float32, False, "contiguous")
    with pytest.raises(SEKernelError) as error:
        ops.se_scale(x, residual, *weights, "sigmoid", True)
    message = str(error.value)
    assert "\n" not in message and error.value.__cause__ is None and error.value.__suppress_context__
    assert "_scale_kernel" in message and "does not support sm_100" in message
    assert "SENET_TRITON=0" in message and ("interpreter" in message or "sm_" in message)


def test_the_command_line_reports_a_failing_kernel_in_one_line(broken_scale_kernel, capsys):
    from senet.cli import main

    argv = ["bench", "--models", "se_resnet20_cifar", "--mode", "train", "--size", "8", "--batch", "2"]
    status = main([*argv, "--repeats", "1", "--warmup", "0", "--no-memory", "--device", DEVICE])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert "_scale_kernel" in err and "SENET_TRITON=0" in err


def _amp_step(model, images, compiled=False):
    """One AMP training step's loss, gradients and BatchNorm statistics (the model is changed in place)."""
    forward = torch.compile(model, fullgraph=True) if compiled else model
    with torch.autocast("cuda", dtype=torch.float16):
        loss = forward(images).float().log_softmax(1)[:, 0].mean()
    loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters()}
    stats = {name: b.float() for name, b in model.named_buffers() if name.endswith("running_var")}
    return loss.detach(), grads, stats


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA only: a whole se_resnet50 step at 224 x 224")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled-fullgraph"])
def test_a_whole_se_resnet50_amp_step_through_the_kernels_equals_the_pytorch_path(compiled):
    import copy

    import senet
    from senet.ops import use_triton_kernels

    model = senet.create_model("se_resnet50").cuda().to(memory_format=torch.channels_last)
    images = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    use_triton_kernels(False)
    try:
        reference = _amp_step(copy.deepcopy(model), images)
    finally:
        use_triton_kernels(True)
    launches = []
    with pytest.MonkeyPatch.context() as patch:
        kernels = ops.triton_kernels(images)
        original = kernels._launch
        patch.setattr(kernels, "_launch", lambda k, *a, **c: launches.append(k) or original(k, *a, **c))
        result = _amp_step(copy.deepcopy(model), images, compiled)
    assert len(launches) >= 16 * 4  # every unit, forward and backward, through the kernels
    torch.testing.assert_close(result[0], reference[0], rtol=1e-2, atol=1e-2)
    for got, want in zip(result[1:], reference[1:], strict=True):
        for name, value in want.items():
            # fp16 sums over N*H*W: compare each tensor as a whole, relative to its norm
            error = (got[name] - value).norm() / value.norm().clamp_min(1e-12)
            assert error < 2e-2, f"{name}: relative error {error:.3g}"


@pytest.mark.parametrize("training", [True, False])
def test_observed_or_removed_blocks_step_off_the_kernels(training, monkeypatch, triton_on_this_device):
    """The analysis's gate statistics and its removal study must see every input,
    also where the kernels run."""
    from senet import SqueezeExcite

    launches = []
    original = triton_on_this_device._launch
    monkeypatch.setattr(
        triton_on_this_device, "_launch", lambda k, *a, **c: launches.append(k) or original(k, *a, **c)
    )
    se = SqueezeExcite(6, reduction=2).to(DEVICE).train(training)
    x, residual = torch.randn(2, 6, 3, 3, device=DEVICE), torch.randn(2, 6, 3, 3, device=DEVICE)
    with torch.set_grad_enabled(training):
        seen = []
        handle = se.register_gates_hook(lambda block, s: seen.append(s))
        out = se.scale_and_add(x, residual)
        handle.remove()
        assert len(seen) == 1 and not launches
        torch.testing.assert_close(out, residual + x * seen[0])
        se.removed = True
        assert torch.equal(se.scale_and_add(x, residual), residual + x) and torch.equal(se(x), x)
        assert not launches
        se.removed = False
        se.scale_and_add(x, residual)
    assert launches  # and back on the kernels once nobody observes and the block is back


@pytest.mark.parametrize("training", [True, False])
def test_a_batchnorm_dtype_pytorch_refuses_stays_off_the_kernels(
    training, monkeypatch, triton_on_this_device
):
    """float64 statistics with fp32 input: nn.BatchNorm2d refuses the mix, so the kernels must not compute a
    result for it; fp32 statistics with fp16 input (AMP's mix) still go through them."""
    from senet import SqueezeExcite

    launches = []
    original = triton_on_this_device._launch
    monkeypatch.setattr(
        triton_on_this_device, "_launch", lambda k, *a, **c: launches.append(k) or original(k, *a, **c)
    )
    se = SqueezeExcite(4, reduction=2, recompute_norm=True).to(DEVICE).train(training)
    c, residual = torch.randn(3, 4, 5, 5, device=DEVICE), torch.randn(3, 4, 5, 5, device=DEVICE)
    norm = torch.nn.BatchNorm2d(4).to(DEVICE).double().train(training)
    with pytest.raises(RuntimeError) as plain:
        norm(c)
    with torch.set_grad_enabled(training), pytest.raises(RuntimeError) as fused:
        se.norm_scale_and_add(c, norm, residual, torch.nn.ReLU())
    assert str(fused.value) == str(plain.value) and not launches
    with torch.set_grad_enabled(training):
        half = se.half().norm_scale_and_add(c.half(), norm.float(), residual.half(), torch.nn.ReLU())
    assert half.dtype == torch.float16 and launches


def test_inference_of_input_in_another_dtype_than_the_block_stays_off_the_kernels(
    monkeypatch, triton_on_this_device
):
    """fp16 input into an fp32 block without autocast: the plain ops refuse it, so the kernels must not cast
    the block's weights and compute; under autocast they run (it casts both)."""
    from senet import SqueezeExcite

    launches = []
    original = triton_on_this_device._launch
    monkeypatch.setattr(
        triton_on_this_device, "_launch", lambda k, *a, **c: launches.append(k) or original(k, *a, **c)
    )
    se = SqueezeExcite(4, reduction=2).to(DEVICE).eval()
    x = torch.randn(3, 4, 5, 5, device=DEVICE, dtype=torch.float16)
    with torch.no_grad():
        with pytest.raises(RuntimeError) as plain:
            se.gates(x)
        with pytest.raises(RuntimeError) as fused:
            se.scale_and_add(x, x)
        assert str(fused.value) == str(plain.value) and not launches
        with torch.autocast(DEVICE, dtype=torch.float16):
            out = se.scale_and_add(x, x)
    assert out.dtype == torch.float16 and launches
