import pytest
from torch import nn

import senet
from senet.models.registry import PaperFigures

PAPER_RESNET_FAMILY = [
    "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d", "se_resnet50", "se_resnet101",
    "se_resnet152", "se_resnext50_32x4d", "se_resnext101_32x4d", "senet154",
]


def test_every_network_of_the_foundation_is_registered():
    assert set(PAPER_RESNET_FAMILY) <= set(senet.list_models())


def test_list_models_filters_by_pattern():
    se_models = senet.list_models("se_*")
    assert "se_resnet50" in se_models and "resnet50" not in se_models
    assert senet.list_models("no_such_*") == []


def test_unknown_name_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown model 'se_resnet05'; closest: se_resnet50"):
        senet.create_model("se_resnet05")


def test_unknown_option_is_one_clear_line():
    with pytest.raises(ValueError, match="resnet50 has no option 'colour'"):
        senet.create_model("resnet50", colour="red")


def test_aliases_build_the_same_network():
    assert senet.model_info("seresnet50").name == "se_resnet50"
    model = senet.create_model("seresnet50", num_classes=7)
    assert isinstance(model, nn.Module) and model.num_classes == 7


def test_model_info_carries_paper_figures_and_a_description():
    info = senet.model_info("se_resnet50")
    assert info.paper == PaperFigures(28.09, 3.87, 23.29, 6.62, source=info.paper.source)
    assert info.family == "resnet"
    assert "SE-ResNet-50" in info.description


def test_registering_a_name_twice_is_refused():
    from senet.models.registry import register_model

    with pytest.raises(ValueError, match="registered twice"):
        register_model()(senet.model_info("resnet50").builder)
