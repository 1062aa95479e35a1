"""timm's names build timm's networks: our ``seresnet50`` ... computes what timm's layout computes.

The reference below is written from timm's published architecture (torchvision-style stem with a padded
max-pool, stride in the 3x3 conv, SE after the last BN of each bottleneck, 1x1 projection shortcuts) with
functional ops only, reading timm's parameter names; no module of ours takes part in it.
"""

import pytest
import torch
import torch.nn.functional as F

import senet


def _bn(x, sd, name):
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def _se(x, sd, name):
    hidden = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), sd[f"{name}.fc1.weight"], sd[f"{name}.fc1.bias"]))
    return x * torch.sigmoid(F.conv2d(hidden, sd[f"{name}.fc2.weight"], sd[f"{name}.fc2.bias"]))


def timm_se_resnet(x, sd, depths, groups):
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, depth in enumerate(depths, 1):
        for index in range(depth):
            unit = f"layer{stage}.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            out = F.relu(_bn(F.conv2d(x, sd[f"{unit}.conv1.weight"]), sd, f"{unit}.bn1"))
            out = F.conv2d(out, sd[f"{unit}.conv2.weight"], stride=stride, padding=1, groups=groups)
            out = F.relu(_bn(out, sd, f"{unit}.bn2"))
            out = _se(_bn(F.conv2d(out, sd[f"{unit}.conv3.weight"]), sd, f"{unit}.bn3"), sd, f"{unit}.se")
            if f"{unit}.downsample.0.weight" in sd:
                x = _bn(
                    F.conv2d(x, sd[f"{unit}.downsample.0.weight"], stride=stride), sd, f"{unit}.downsample.1"
                )
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize(
    "name, depths, groups",
    [
        ("seresnet50", (3, 4, 6, 3), 1),
        ("seresnext50_32x4d", (3, 4, 6, 3), 32),
    ],
)
def test_timm_named_networks_compute_timm_layout(name, depths, groups):
    model = senet.create_model(name, num_classes=10).double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # He-initialised weights keep the signal; random BN statistics, scales and biases
        for key, value in model.state_dict().items():
            if value.is_floating_point() and value.dim() == 1:
                noise = torch.randn(value.shape, generator=generator, dtype=value.dtype) * 0.1
                scale = key.endswith(("running_var", ".weight"))  # 1-d weights: BatchNorm scales
                value.copy_(1 + noise if scale else noise)
    x = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)
        reference = timm_se_resnet(x, model.state_dict(), depths, groups)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    # The paper layout under the same weights computes something else: the names are not interchangeable.
    paper = (
        senet.create_model(
            name.replace("seresnet", "se_resnet").replace("seresnext", "se_resnext"), num_classes=10
        )
        .double()
        .eval()
    )
    paper.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (paper(x) - reference).abs().max() > 1e-3 * reference.abs().max()


@pytest.mark.parametrize("name", ["seresnet50", "seresnext50_32x4d"])
def test_timm_weights_load_strictly_and_give_timms_outputs(name):
    timm = pytest.importorskip("timm")  # an extra check where timm is installed (pip install 'senet[bench]')
    theirs = timm.create_model(name, num_classes=10).double().eval()
    ours = senet.create_model(name, num_classes=10).double().eval()
    ours.load_state_dict(theirs.state_dict())  # strict: the same parameter names and shapes
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-9, atol=1e-9)
