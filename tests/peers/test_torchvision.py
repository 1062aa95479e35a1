"""senet against torchvision's own code: every torchvision network that ``senet convert`` takes (ResNets,
ResNeXts, wide ResNets, VGG-16-BN), with random weights in a file of torchvision's published name, converted
and loaded the documented way, computes torchvision's logits; the preprocessing recorded for each published
file is torchvision's own transform of those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision
from peer_networks import (
    NUM_CLASSES,
    assert_same_logits,
    assert_within_one_grey_level,
    convert_and_load,
    photo_image,
    randomise,
    save_source,
)
from PIL import Image
from torchvision.models import get_model_weights

from senet.weights.convert import SOURCES, torchvision_preprocessing

MODELS = list(SOURCES["torchvision"])
PUBLISHED = [(name, weights) for name in MODELS for weights in get_model_weights(name)]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return photo_image()


@pytest.mark.parametrize("name", MODELS)
def test_converted_torchvision_weights_compute_what_torchvision_computes(tmp_path, name):
    theirs = randomise(torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES))
    file_name = Path(get_model_weights(name)["IMAGENET1K_V1"].url).name
    ours, info = convert_and_load(
        "torchvision", name, save_source(theirs.state_dict(), tmp_path / file_name), tmp_path
    )
    assert_same_logits(ours, theirs)
    assert info.preprocessing == torchvision_preprocessing(name, file_name)


@pytest.mark.parametrize("name,weights", PUBLISHED, ids=[f"{n}.{w.name}" for n, w in PUBLISHED])
def test_recorded_preprocessing_is_torchvisions_for_every_published_file(photo, name, weights):
    ours = torchvision_preprocessing(name, Path(weights.url).name)
    theirs = weights.transforms()
    assert (ours.resize, ours.input_size) == (theirs.resize_size[0], theirs.crop_size[0])
    assert_within_one_grey_level(ours.eval_transform()(photo), theirs(photo), ours.std)
