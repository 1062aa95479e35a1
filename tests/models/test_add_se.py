"""senet.add_se: SE blocks inserted into other projects' networks (paper Sec. 4, Figs. 2-3), and the
``torchvision:NAME`` models of create_model / senet train that use it.

torchvision networks are built with weights=None (random) and run at 64 x 64, batch 2. The parameter increase
is checked against the paper's formula computed from each architecture's stage widths, written out here."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torchvision
from torch import nn

import senet
from senet import add_se
from senet.models.registry import create_model

X = (2, 3, 64, 64)


def _paper_increase(widths: list[int], r: int = 16) -> int:
    """Sec. 4: SE adds 2/r * sum_s N_s * C_s^2 weights, plus biases C/r + C per block; one width per block
    (the hidden width C // r, at least 1, is the paper's C / r where r divides C)."""
    return sum(2 * c * max(1, c // r) + max(1, c // r) + c for c in widths)


def _blocks(depths, widths):
    return [c for n, c in zip(depths, widths, strict=True) for _ in range(n)]


# (torchvision model, where, the SE blocks' names, their channels in order) from each architecture's layout.
def _resnet(depths, widths):
    names = [f"layer{s + 1}.{i}.se" for s, n in enumerate(depths) for i in range(n)]
    return names, _blocks(depths, widths)


VGG16_CONVS = [(0, 64), (3, 64), (7, 128), (10, 128), (14, 256), (17, 256), (20, 256)]
VGG16_CONVS += [(24, 512), (27, 512), (30, 512), (34, 512), (37, 512), (40, 512)]
# MobileNetV2 (Sandler et al. 2018, Table 2): a block adds its input where it keeps width and resolution: all
# but the first of each stage; features.1 is the first stage (16 channels, one
# block), features.18 the last conv.
MOBILENET_V2_STAGES = [(16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)]


def _mobilenet_v2():
    names, widths, index = [], [], 1
    for width, repeats in MOBILENET_V2_STAGES:
        for k in range(repeats):
            if k > 0:
                names.append(f"features.{index}.se")
                widths.append(width)
            index += 1
    return names, widths


CASES = {
    "resnet18": ("residual", *_resnet((2, 2, 2, 2), (64, 128, 256, 512))),
    "resnet50": ("residual", *_resnet((3, 4, 6, 3), (256, 512, 1024, 2048))),
    "mobilenet_v2": ("residual", *_mobilenet_v2()),
    # SE after each conv's ReLU (BN at index + 1, ReLU at index + 2), named after the ReLU as our se_vgg16_bn
    "vgg16_bn": ("conv", [f"features.{i + 2}.se" for i, _ in VGG16_CONVS], [c for _, c in VGG16_CONVS]),
}
_BUILT: dict[str, nn.Module] = {}


def _torchvision(name: str) -> nn.Module:
    """One randomly initialised torchvision network per name and test session (vgg16_bn takes seconds)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = torchvision.models.get_model(name, weights=None, num_classes=10)
    return _BUILT[name]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_networks_become_se_networks_that_train(name):
    where, names, widths = CASES[name]
    plain = _torchvision(name)
    model = add_se(plain, where=where)
    assert model.add_se_config == {
        "reduction": 16,
        "where": where,
        "init": "paper",
        "gate": "sigmoid",
        "input_size": [224, 224],
        "blocks": names,
    }
    # Exactly the new keys appear; every original tensor is there, equal, and a
    # copy (the plain model is intact).
    original, state = plain.state_dict(), model.state_dict()
    new = {f"{block}.{fc}.{p}" for block in names for fc in ("fc1", "fc2") for p in ("weight", "bias")}
    assert set(state) == set(original) | new
    for key, tensor in original.items():
        assert torch.equal(state[key], tensor) and state[key].data_ptr() != tensor.data_ptr(), key
    assert [model.get_submodule(b).channels for b in names] == widths
    assert _count(model) - _count(plain) == _paper_increase(widths)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()  # the cached plain network may have been put in evaluation mode by another test
    loss = nn.functional.cross_entropy(model(torch.randn(X)), torch.tensor([1, 7]))
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    for block in names:
        for p in model.get_submodule(block).parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, block


@pytest.mark.parametrize("name", list(CASES))
def test_identity_start_reproduces_the_plain_network(name):
    plain = _torchvision(name).eval()
    model = add_se(plain, where=CASES[name][0], init="identity").eval()
    assert model.add_se_config["gate"] == "2sigmoid"
    x = torch.randn(X)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-5)
    for block in model.add_se_config["blocks"]:  # fc2 starts at zero: the gates are 2 * sigmoid(0) = 1
        assert not model.get_submodule(block).fc2.weight.any()
    if name == "resnet18":  # ...and it learns: the gradient reaches fc2 (2s' = s(1 - s/2) = 1/2 at the start)
        model.train()
        nn.functional.cross_entropy(model(x), torch.tensor([1, 7])).backward()
        assert all(
            model.get_submodule(b).fc2.weight.grad.abs().sum() > 0 for b in model.add_se_config["blocks"]
        )


def test_the_paper_formula_for_resnet50_by_the_numbers():
    # SE-ResNet-50 has 28.1M parameters to ResNet-50's 25.6M (paper Table 2; Sec. 4: "~2.5 million").
    assert _paper_increase(CASES["resnet50"][2]) == 2_514_944 + 16_048


def test_torchvision_resnet50_with_se_is_our_se_resnet50():
    """Same placement as our own SE-ResNet-50 (torchvision layout): the state dict loads strictly, and the
    outputs agree."""
    model = add_se(_torchvision("resnet50")).eval()
    ours = create_model("se_resnet50", num_classes=10, stride_in_1x1=False, stem_pool="torchvision").eval()
    ours.load_state_dict(model.state_dict())
    x = torch.randn(X)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=1e-4, atol=1e-5)


def test_torchvision_vgg16_bn_with_conv_se_has_our_se_vgg16_bn_keys():
    with torch.device("meta"):
        model = add_se(torchvision.models.vgg16_bn(num_classes=10), where="conv")
        ours = create_model("se_vgg16_bn", num_classes=10)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def _users_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 1),  # no norm, no activation: the block is the conv alone
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 5),
    )


def test_a_users_sequential_gets_se_after_each_conv_block():
    net = _users_net()
    model = add_se(net, reduction=8, where="conv", input_size=32)
    assert model.add_se_config["blocks"] == ["2.se", "4.se", "5.se"]
    assert set(model.state_dict()) - set(net.state_dict()) == {
        f"{b}.{fc}.{p}" for b in ("2.se", "4.se", "5.se") for fc in ("fc1", "fc2") for p in ("weight", "bias")
    }
    assert _count(model) - _count(net) == _paper_increase([32, 64, 64], r=8)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5) and model.get_submodule("5.se").fc1.weight.grad is not None
    with pytest.raises(ValueError, match="no residual addition.*where='conv'"):
        add_se(net)


def test_where_callable_picks_modules_and_is_recorded_as_names():
    plain = _torchvision("resnet18")
    model = add_se(plain, where=lambda name, m: isinstance(m, torchvision.models.resnet.BasicBlock))
    units = [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert model.add_se_config["where"] == units
    assert model.add_se_config["blocks"] == [f"{u}.se" for u in units]
    # The recorded names rebuild the same network.
    again = add_se(plain, where=model.add_se_config["where"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    # A module called twice (BasicBlock's one ReLU) gets a block per call.
    twice = add_se(plain, where=["layer1.0.relu"])
    assert twice.add_se_config["blocks"] == ["layer1.0.relu.se", "layer1.0.relu.se_1"]
    model(torch.randn(X)).sum().backward()


class _Unit(nn.Module):
    """A residual unit with what a graph module would not copy: an unused module, an unused buffer, a
    non-persistent buffer (no state-dict key), and a learnt scale on the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.unused = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(3, 3)
        self.register_buffer("mask", torch.ones(1, 8, 1, 1), persistent=False)
        self.register_buffer("spare", torch.zeros(2))
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x + self.alpha * self.bn(self.conv(x)) * self.mask


def test_every_original_key_is_kept_even_of_what_the_forward_never_uses():
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Unit(), _Unit(), nn.AdaptiveAvgPool2d(1))
    body.register_parameter("temperature", nn.Parameter(torch.ones(())))  # a container's, never used
    net = nn.Sequential(body, nn.Flatten())
    model = add_se(net, reduction=4, input_size=16)
    assert model.add_se_config["blocks"] == ["0.1.se", "0.2.se"]
    new = {f"0.{u}.se.{fc}.{p}" for u in (1, 2) for fc in ("fc1", "fc2") for p in ("weight", "bias")}
    assert set(model.state_dict()) == set(net.state_dict()) | new
    model(torch.randn(2, 3, 16, 16)).sum().backward()


class _Inner(nn.Module):
    def __init__(self, training_switch: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.training_switch = training_switch

    def forward(self, x):
        if self.training_switch:
            return x + self.conv(x) if self.training else x + 2 * self.conv(x)
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            x = x + self.conv(x)
        return x


class _Outer(nn.Module):
    def __init__(self, training_switch: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = _Inner(training_switch)

    def forward(self, x):
        return self.inner(self.stem(x))


def test_refusals_say_why_and_what_to_pass():
    from torchvision.ops import SqueezeExcitation

    with pytest.raises(ValueError, match="has SE blocks already.*'layer1.0.se' is a SqueezeExcite"):
        add_se(create_model("se_resnet20_cifar", widths=(4, 8, 8)))
    with pytest.raises(ValueError, match="has SE blocks already.*'1' is a SqueezeExcitation"):
        add_se(nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcitation(8, 2)))
    with pytest.raises(ValueError, match="cannot trace _Outer with torch.fx in 'inner'.*where=\\[names\\]"):
        add_se(_Outer())
    assert add_se(_Outer(), where=["inner"]).add_se_config["blocks"] == ["inner.se"]  # kept whole: fine
    with pytest.raises(ValueError, match="another path in training than in evaluation"):
        add_se(_Outer(training_switch=True))
    with pytest.raises(ValueError, match="has no module 'layer9'; closest: layer4"):
        add_se(_torchvision("resnet18"), where=["layer9"])
    with pytest.raises(ValueError, match="'fc' returns a value of shape \\(1, 10\\)"):
        add_se(_torchvision("resnet18"), where=["fc"])
    with pytest.raises(ValueError, match="selected none"):
        add_se(_torchvision("resnet18"), where=lambda name, m: False)
    with pytest.raises(ValueError, match="input_size"):
        add_se(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)), where="conv")


def test_se_blocks_survive_fx_passes_pickling_and_copies():
    """The blocks are graph nodes, not hooks: senet.optimize_for_inference (BN folded through torch.fx) keeps
    them; pickling and deepcopy keep the network and its recorded options."""
    plain = _torchvision("resnet18").eval()
    model = add_se(plain).eval()
    x = torch.randn(X)
    with torch.no_grad():
        expected = model(x)
        folded = senet.optimize_for_inference(model, compile=False, channels_last=False, bf16=False)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
        assert (expected - plain(x)).abs().max() > 1e-2  # the SE blocks do change the outputs
        for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert other.add_se_config == model.add_se_config
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


def test_create_model_builds_torchvision_models_with_and_without_se():
    with torch.device("meta"):  # the layout alone
        model = create_model(
            "torchvision:resnet50",
            num_classes=7,
            add_se=True,
            se_reduction=16,
            se_where="residual",
            se_init="paper",
        )
        plain = create_model("torchvision:resnet18", num_classes=3)
    assert model.add_se_config["blocks"] == CASES["resnet50"][1]
    assert model.eval()(torch.randn(X, device="meta")).shape == (2, 7)
    assert type(plain) is torchvision.models.ResNet and plain.fc.out_features == 3
    # in_chans=1: the first conv's RGB filters summed (timm's adapt_input_conv), from the same initialisation.
    torch.manual_seed(1)
    gray = create_model("torchvision:resnet18", in_chans=1, add_se=True, se_init="identity")
    torch.manual_seed(1)
    rgb = torchvision.models.resnet18()
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    assert senet.model_info("torchvision:resnet18").family == "torchvision"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("torchvision:resnet5", {}, "closest: torchvision:resnet50"),
        ("se_resnet50", {"add_se": True}, "se_resnet50 has SE blocks already"),
        ("resnet50", {"add_se": True}, "use its SE twin se_resnet50"),
        ("torchvision:resnet18", {"se_where": "conv"}, "se_where given without add_se=True"),
        (
            "torchvision:resnet18",
            {"add_se": True, "se_init": "zero"},
            "init='zero'; choose one of paper, identity",
        ),
        ("torchvision:vgg16_bn", {"add_se": True}, "no residual addition.*where='conv'"),
        ("torchvision:resnet18", {"drop_rate": 0.2}, "has no option 'drop_rate'"),
        ("torchvision:resnet18", {"weights": "DEFAULT"}, "weights= is not an option"),
        ("torchvision:squeezenet1_0", {"in_chans": 1, "add_se": True, "se_where": "conv"}, None),
    ],
)
def test_create_model_refuses_what_it_cannot_honour(name, options, message):
    with torch.device("meta"):
        if message is None:  # the control: a first conv to adapt, conv blocks to find
            create_model(name, **options)
            return
        with pytest.raises(ValueError, match=message):
            create_model(name, **options)


def test_senet_train_add_se_saves_resumes_and_reloads(tmp_path, make_folder):
    """`senet train --model torchvision:resnet18 --add-se`: the SE options go into the checkpoint's config, so
    resume and load_pretrained (senet eval / predict / export) rebuild the same network. A complete ResNet-18
    (11M parameters) on 8 images of 32 x 32, 2 steps an epoch."""
    from senet.cli import main
    from senet.weights.checkpoint import load_checkpoint

    root = make_folder(classes=("cat", "dog"), per_class=4)
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "torchvision:resnet18",
        "--add-se",
        "--se-init",
        "identity",
        "--data",
        str(root),
    ]
    argv += [
        *"--image-size 32 --batch-size 4 --lr 0.01 --device cpu --log-interval 0".split(),
        "--output",
        str(run),
    ]
    assert main([*argv, "--epochs", "1"]) == 0
    checkpoint = load_checkpoint(run)
    options = checkpoint.meta["config"]["model_options"]
    assert options == {"add_se": True, "se_init": "identity"}

    loaded = senet.load_pretrained(run).eval()
    rebuilt = create_model("torchvision:resnet18", num_classes=2, **options)
    rebuilt.load_state_dict(checkpoint.model_state())  # strict: the same keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), rebuilt.eval()(x), rtol=0, atol=0)
    assert loaded.add_se_config["init"] == "identity" and len(loaded.add_se_config["blocks"]) == 8
    assert loaded.pretrained_info.model == "torchvision:resnet18"
    # Fine-tuning onto other classes: the last Linear (torchvision's fc) is replaced, everything else loaded.
    tuned = senet.load_pretrained(run, num_classes=5).eval()
    assert tuned.fc.out_features == 5 and tuned(x).shape == (2, 5)
    assert torch.equal(
        tuned.get_submodule("layer4.1.se").fc1.weight, loaded.get_submodule("layer4.1.se").fc1.weight
    )

    # Resume rebuilds the network from the saved options, and its weights load strictly.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--extend-schedule"]) == 0
    assert load_checkpoint(run).meta["epoch"] == 2
