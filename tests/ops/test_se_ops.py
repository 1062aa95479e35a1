"""The SE operators (torch.ops.senet.*): registration checked by torch's own opcheck (schema, fake kernel,
autograd), every variant against the plain ops, and the paths users train in: autocast, channels_last,
torch.compile without graph breaks, deterministic mode, an empty batch."""

import pytest
import torch
import torch.nn.functional as F

import senet
from senet.ops import squeeze_excite as ops

GATES = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "2sigmoid": lambda t: 2 * torch.sigmoid(t),
}


def _weights(channels=6, hidden=3, bias=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(hidden, channels, dtype=dtype, generator=g, requires_grad=True)
    w2 = torch.randn(channels, hidden, dtype=dtype, generator=g, requires_grad=True)
    b1 = torch.randn(hidden, dtype=dtype, generator=g, requires_grad=True) if bias else None
    b2 = torch.randn(channels, dtype=dtype, generator=g, requires_grad=True) if bias else None
    return w1, b1, w2, b2


def _plain(x, residual, w1, b1, w2, b2, gate):
    """Eqs. 2-4 with functional ops: squeeze, FC-ReLU-FC-gate, rescale (+ residual)."""
    s = GATES[gate](F.linear(F.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2))
    out = x * s[:, :, None, None]
    return out if residual is None else out + residual


def _inputs(shape=(2, 6, 5, 3), channels_last=False, residual=True, dtype=torch.float64):
    x = torch.randn(shape, dtype=dtype)
    r = torch.randn(shape, dtype=dtype) if residual else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), (r.requires_grad_() if r is not None else None)


@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu", "2sigmoid"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_se_scale_matches_the_plain_ops_forward_and_backward(gate, residual, bias, channels_last):
    x, r = _inputs(channels_last=channels_last, residual=residual)
    weights = _weights(bias=bias)
    leaves = [t for t in (x, r, *weights) if t is not None]
    grad_out = torch.randn(x.shape, dtype=x.dtype)
    expected = _plain(x, r, *weights, gate)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out)
    out = ops.se_scale(x, r, *weights, gate)[0]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(out, leaves, grad_out), expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("residual", [True, False])
def test_torch_opcheck_accepts_the_registrations(residual):
    x, r = _inputs(residual=residual)
    torch.library.opcheck(torch.ops.senet.se_scale.default, (x, r, *_weights(), "sigmoid"))
    c, residual_t = _inputs()
    bn = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(), torch.randn(6, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.senet.se_norm_scale.default,
        (c, residual_t, bn[0], bn[1].requires_grad_(), 1e-5, *_weights(), "tanh"),
    )


def test_the_norm_operator_is_batchnorm_then_se_and_updates_running_stats_as_batchnorm_does():
    c, r = _inputs(shape=(3, 6, 4, 4))
    norm = torch.nn.BatchNorm2d(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    running_mean, running_var = norm.running_mean.clone(), norm.running_var.clone()  # F.batch_norm updates
    weights = _weights()
    out, mean, invstd, *_ = ops.se_norm_scale(c, r, norm.weight, norm.bias, norm.eps, *weights, "sigmoid")
    ops.update_running_stats(
        norm.running_mean, norm.running_var, mean, invstd, norm.eps, 3 * 16, norm.momentum
    )
    y = F.batch_norm(
        c, running_mean, running_var, norm.weight, norm.bias, training=True, momentum=0.1, eps=1e-5
    )
    expected = _plain(y, r, *weights, "sigmoid")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norm.running_mean, running_mean)
    torch.testing.assert_close(norm.running_var, running_var)
    leaves = [c, r, norm.weight, norm.bias, *weights]
    for got, want in zip(
        torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(expected.sum(), leaves), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_an_empty_batch_and_one_pixel_maps_work():
    for shape in ((0, 6, 4, 4), (1, 6, 1, 1)):
        x, r = _inputs(shape=shape)
        out = ops.se_scale(x, r, *_weights(), "sigmoid")[0]
        out.sum().backward()
        torch.testing.assert_close(out, _plain(x, r, *_weights(), "sigmoid"))
        assert x.grad.shape == shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_under_cpu_autocast_goes_through_the_operator_in_the_chosen_dtype(monkeypatch, dtype):
    calls = []
    original = ops.se_scale

    def counted(x, *args):
        calls.append(x.dtype)
        return original(x, *args)

    monkeypatch.setattr(ops, "se_scale", counted)
    model = senet.create_model("se_resnet20_cifar", widths=(4, 8, 8))
    with torch.autocast("cpu", dtype=dtype):
        loss = model(torch.randn(2, 3, 16, 16)).float().sum()
    loss.backward()
    assert calls == [dtype] * 9  # every SE block of ResNet-20, in the autocast dtype the user chose
    assert all(p.grad is not None for p in model.parameters())


def test_compiled_training_has_no_graph_break_and_matches_eager():
    se = senet.SqueezeExcite(8, reduction=2)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    residual = torch.randn(2, 8, 5, 5)
    eager = se.scale_and_add(x, residual)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(lambda t: se.scale_and_add(t, residual), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA only: CPU reductions are deterministic anyway"
)
def test_deterministic_mode_gives_identical_gradients():
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            x, r = (t.cuda().detach().requires_grad_() for t in _inputs(dtype=torch.float32))
            x.data.copy_(torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape).sin())
            weights = [w.detach().cuda().requires_grad_() for w in _weights(dtype=torch.float32)]
            ops.se_scale(x, r, *weights, "sigmoid")[0].sum().backward()
            grads.append(x.grad)
        assert torch.equal(*grads)
    finally:
        torch.use_deterministic_algorithms(False)


def test_unknown_gates_are_refused_by_name():
    x, r = _inputs()
    with pytest.raises(ValueError, match="unknown gate 'swish'"):
        ops.se_scale(x, r, *_weights(), "swish")


def test_compiled_training_under_autocast_has_no_graph_break():
    model = senet.create_model("se_resnet18", num_classes=3, widths=(4, 8, 8, 8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(torch.randn(2, 3, 32, 32))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert all(p.grad is not None for p in model.parameters())
