"""layout_options: the build options a strict load cannot check, read from the built network."""

import pytest
import torch

import senet
from senet.models.layout import layout_options

# (model, a layout option, a value other than the builder's default)
LAYOUT_CASES = [
    ("resnet18", "stem_pool", "torchvision"),
    ("se_resnet50", "stride_in_1x1", False),
    ("se_resnet50", "stem_pool", "torchvision"),
    ("se_resnet50", "se_squeeze", "max"),
    ("se_resnet50", "se_gate", "tanh"),
    ("se_resnet50", "se_position", "post"),
    ("senet154", "stride_in_1x1", True),
    ("se_resnet164_cifar", "stride_in_1x1", True),
    ("se_bn_inception", "se_gate", "relu"),
]


@pytest.mark.parametrize("name,option,value", LAYOUT_CASES)
def test_layout_options_are_read_from_the_built_network(name, option, value):
    """What layout_options reads is what the builder was given, defaults included, and a network built from
    what it reads is built the same way."""
    with torch.device("meta"):
        default = layout_options(senet.create_model(name))
        assert default[option] != value
        assert layout_options(senet.create_model(name, **default)) == default
        assert layout_options(senet.create_model(name, **{option: value})) == {**default, option: value}
