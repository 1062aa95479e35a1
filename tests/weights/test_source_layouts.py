"""The source layouts of ``source_layouts.py`` are the real projects' layouts, and their reference forwards
compute what the real projects' networks compute.

Each check loads ``source_state_dict`` into the source project's own network, strictly (so the key names,
shapes and buffers are exactly the project's), and compares its float64 eval-mode logits with
``reference_forward``. torchvision is always installed; timm is optional (the checks skip without it).
Pretrained-models (Cadene's ``pretrainedmodels``) is not installed: its SENets are checked through timm's
``legacy_*`` port, which keeps its key names: se_resnet50 <-> legacy_seresnet50, se_resnet101 <->
legacy_seresnet101, se_resnet152 <-> legacy_seresnet152, se_resnext50_32x4d <-> legacy_seresnext50_32x4d,
se_resnext101_32x4d <-> legacy_seresnext101_32x4d, senet154 <-> legacy_senet154.

Cost: the networks are built on the meta device and take the state by assignment (no init, no copy), and
timm's resnet50/101/152/resnext50_32x4d reuse torchvision's state and reference logits, as their layouts
are the same (asserted below). What remains is drawing ~1.1G random weights and three float64 passes per
network; the deepest/widest ones dominate. Measured on one core (OMP_NUM_THREADS=1, 2-core machine): the
whole file ~65 s, peak memory ~3 GB (vgg16_bn in float64); the 101/152/154-deep, wide101 and vgg16_bn checks
~47 s of it. The deeper twins of checked layouts (source_layouts.CHECKED_ELSEWHERE) run with pytest --run-slow.
"""

import pytest
import torch
import torchvision
from source_layouts import (
    CHECKED_ELSEWHERE,
    SOURCE_MODELS,
    legacy_timm_name,
    reference_forward,
    source_layout,
    source_state_dict,
)

NUM_CLASSES = 10
SHARED = [name for name in SOURCE_MODELS["timm"] if name in SOURCE_MODELS["torchvision"]]
TIMM_ONLY = [name for name in SOURCE_MODELS["timm"] if name not in SHARED]


def _names(project, names):
    return [
        pytest.param(n, marks=pytest.mark.slow) if (project, n) in CHECKED_ELSEWHERE else n for n in names
    ]


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _check_state(state: dict[str, torch.Tensor]) -> None:
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == torch.long and value.dim() == 0, key
        else:
            assert value.dtype == torch.float64 and torch.isfinite(value).all(), key
        if key.endswith("running_var"):
            assert (value > 0).all(), key


def _reference(project: str, name: str):
    state = source_state_dict(project, name, num_classes=NUM_CLASSES, dtype=torch.float64)
    _check_state(state)
    x = _input()
    logits = reference_forward(project, name, state, x)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == torch.float64
    # A meaningful comparison: finite, O(1), spread over classes, and depends on the input.
    assert torch.isfinite(logits).all()
    assert 1e-2 < logits.std() < 10 and logits.abs().max() < 20
    assert (logits[0] - logits[1]).abs().max() > 1e-2 * logits.abs().max()
    return state, x, logits


def _their_logits(build, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, strict=True, assign=True)  # strict: exactly the project's keys and shapes
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    model.eval()
    with torch.no_grad():
        return model(x)


def _timm_is_installed() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _timm_builder(name: str):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("name", _names("torchvision", SOURCE_MODELS["torchvision"]))
def test_torchvision_layout_and_reference(name):
    state, x, logits = _reference("torchvision", name)
    build = getattr(torchvision.models, name)
    theirs = _their_logits(lambda: build(weights=None, num_classes=NUM_CLASSES), state, x)
    torch.testing.assert_close(theirs, logits, rtol=1e-7, atol=1e-9)
    if name in SHARED and _timm_is_installed():
        # timm's namesake: same layout (test_timm_resnets_are_torchvisions), the same network
        theirs = _their_logits(_timm_builder(name), state, x)
        torch.testing.assert_close(theirs, logits, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", SHARED)
def test_timm_resnets_are_torchvisions(name):
    assert source_layout("timm", name, num_classes=NUM_CLASSES) == source_layout(
        "torchvision", name, num_classes=NUM_CLASSES
    )


@pytest.mark.parametrize("name", _names("timm", TIMM_ONLY))
def test_timm_layout_and_reference(name):
    build = _timm_builder(name)
    state, x, logits = _reference("timm", name)
    torch.testing.assert_close(_their_logits(build, state, x), logits, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", SOURCE_MODELS["pretrainedmodels"])
def test_pretrainedmodels_layout_is_timms_legacy_port(name):
    """Same keys, shapes and order as the timm port (checked against timm above), so the same state dict."""
    legacy = legacy_timm_name(name)
    assert legacy in SOURCE_MODELS["timm"]
    ours = source_layout("pretrainedmodels", name, num_classes=NUM_CLASSES)
    assert ours == source_layout("timm", legacy, num_classes=NUM_CLASSES)
    assert ours[0][0] == "layer0.conv1.weight" and ours[-1][0] == "last_linear.bias"


def test_pretrainedmodels_state_and_reference_match_timms_legacy_port():
    name = "se_resnext50_32x4d"
    ours = source_state_dict("pretrainedmodels", name, num_classes=NUM_CLASSES)
    timms = source_state_dict("timm", legacy_timm_name(name), num_classes=NUM_CLASSES)
    assert list(ours) == list(timms)
    for key in ours:
        assert torch.equal(ours[key], timms[key]), key
    x = _input()
    assert torch.equal(
        reference_forward("pretrainedmodels", name, ours, x),
        reference_forward("timm", legacy_timm_name(name), timms, x),
    )


@pytest.mark.parametrize(
    "project, name, first",
    [
        ("torchvision", "resnet50", ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean"]),
        ("torchvision", "vgg16_bn", ["features.0.weight", "features.0.bias", "features.1.weight"]),
        ("timm", "seresnet50", ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean"]),
        ("timm", "legacy_seresnet50", ["layer0.conv1.weight", "layer0.bn1.weight", "layer0.bn1.bias"]),
        ("pretrainedmodels", "senet154", ["layer0.conv1.weight", "layer0.bn1.weight", "layer0.bn1.bias"]),
    ],
)
def test_source_layout_starts_with_the_source_keys(project, name, first):
    assert [key for key, _, _ in source_layout(project, name, num_classes=3)[: len(first)]] == first


def test_source_state_dict_is_deterministic_and_dtype_independent():
    """The same seed gives the same values; dtype is a cast; the body does not depend on num_classes."""
    a = source_state_dict("torchvision", "resnet18", num_classes=3, seed=5)
    b = source_state_dict("torchvision", "resnet18", num_classes=3, seed=5)
    c = source_state_dict("torchvision", "resnet18", num_classes=3, seed=6)
    d = source_state_dict("torchvision", "resnet18", num_classes=4, seed=5, dtype=torch.float32)
    assert list(a) == [key for key, _, _ in source_layout("torchvision", "resnet18", num_classes=3)]
    assert list(a) == list(b) == list(c) == list(d)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not torch.equal(a["bn1.running_var"], c["bn1.running_var"])
    assert d["conv1.weight"].dtype == torch.float32 and d["bn1.num_batches_tracked"].dtype == torch.long
    assert d["fc.weight"].shape == (4, 512)
    body = [key for key in a if not key.startswith("fc.")]
    assert all(torch.equal(a[key].to(d[key].dtype), d[key]) for key in body)
