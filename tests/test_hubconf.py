"""torch.hub from a local clone: the repository's hubconf.py lists and builds every registered model."""

from pathlib import Path

import pytest
import torch

import senet
from senet.data.transforms import Preprocessing
from senet.weights.info import WeightsInfo, save_weights_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A torch.hub cache holding this clone as the GitHub repository ``senet-org/senet`` (branch
    main), the way torch.hub stores a downloaded repository: list and help take GitHub names
    only, and nothing is fetched."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "senet-org_senet_main").symlink_to(REPO, target_is_directory=True)
    return "senet-org/senet:main"


def test_the_hub_lists_every_registered_model(hub_cache):
    entries = torch.hub.list(hub_cache, trust_repo=True, skip_validation=True, verbose=False)
    assert sorted(entries) == sorted(senet.list_models())


def test_the_hub_loads_a_weights_file_into_the_network_it_names(tmp_path):
    options = {"widths": [4, 8, 8], "in_chans": 1}
    source = senet.create_model("se_resnet20_cifar", num_classes=3, **options).eval()
    with torch.no_grad():  # non-trivial statistics, so a wrongly loaded BN would show
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    info = WeightsInfo("se_resnet20_cifar", options, 3, Preprocessing((0.5,), (0.25,), 32, 1.0, "bilinear"))
    path = save_weights_file(tmp_path / "tiny.safetensors", source.state_dict(), info)

    loaded = torch.hub.load(str(REPO), "se_resnet20_cifar", source="local", pretrained=str(path)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), source(x))


def test_hub_options_reach_create_model(hub_cache):
    net = torch.hub.load(str(REPO), "resnet20_cifar", source="local", num_classes=7, widths=[4, 8, 8])
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    doc = torch.hub.help(hub_cache, "resnet20_cifar", trust_repo=True, skip_validation=True)
    assert senet.model_info("resnet20_cifar").description in doc
