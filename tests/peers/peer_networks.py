"""What tests/peers/test_timm.py and test_torchvision.py share: a peer's own network with random weights that
make a comparison meaningful, its file converted by ``senet convert``'s function and loaded the documented way
(``create_model(name, pretrained=FILE)``), and the comparison itself.

Random weights alone would compare nothing: a fresh network's BatchNorms are identities (running mean 0,
variance 1, weight 1) and timm starts each residual branch's last BN at zero, so SE blocks and whole branches
would not count. Every BN gets a random scale and shift (the branch's last BN a small one, U[0.05, 0.15], so a
152-deep stack stays well-conditioned in float32) and running statistics measured on a random batch, as a
trained network's are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import senet
from senet.weights.convert import convert_file
from senet.weights.info import WeightsInfo

NUM_CLASSES = 7
TOLERANCE = 1e-4  # float32 logits, 64 x 64 inputs


def _branch_ends(network: nn.Module) -> set[nn.Module]:
    """The last BN of each residual branch: a bottleneck's bn3, a basic block's bn2."""
    ends = set()
    for module in network.modules():
        if hasattr(
            module, "downsample"
        ):  # a residual unit (torchvision, timm and pretrained-models name it so)
            ends.add(getattr(module, "bn3", None) or module.bn2)
    return ends


@torch.no_grad()
def randomise(network: nn.Module, seed: int = 0) -> nn.Module:
    """``network`` with random BN scales, shifts and measured running statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    ends = _branch_ends(network)
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        low, high = (0.05, 0.15) if norm in ends else (0.2, 0.6)
        norm.weight.uniform_(low, high, generator=generator)
        norm.bias.normal_(0.0, 0.05, generator=generator)
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    network.train()
    network(torch.randn(4, 3, 64, 64, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return network.eval()


def save_source(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``state`` as the peer publishes it: safetensors (timm's hub files) or ``torch.save`` (.pth)."""
    tensors = {key: value.detach().contiguous() for key, value in state.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def convert_and_load(project: str, name: str, source: Path, tmp_path: Path) -> tuple[nn.Module, WeightsInfo]:
    """``source`` converted as ``project``'s ``name`` and loaded through ``create_model(pretrained=...)``."""
    out = tmp_path / "converted.safetensors"
    info = convert_file(project, name, source, out)
    return senet.create_model(info.model, pretrained=out).eval(), info


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: nn.Module, theirs: nn.Module) -> None:
    """The same float32 logits to TOLERANCE, on logits that a wrong layout would change: spread over the
    classes and different for the two inputs."""
    x = inputs()
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.shape == (2, NUM_CLASSES)
    assert expected.std() > 20 * TOLERANCE and (expected[0] - expected[1]).abs().max() > 20 * TOLERANCE
    difference = (got - expected).abs().max().item()
    assert difference <= TOLERANCE, f"max |ours - theirs| = {difference:.3g}"


def photo_image(width: int = 500, height: int = 375) -> Image.Image:
    """A photo-sized RGB image: smooth random colours (bicubic upsampling) with fine detail on top."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int64)
    detail = rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(smooth + detail, 0, 255).astype(np.uint8))


def assert_within_one_grey_level(ours: torch.Tensor, theirs: torch.Tensor, std: tuple[float, ...]) -> None:
    """Two normalised images at most one grey level (1/255 before normalisation) apart anywhere."""
    assert ours.shape == theirs.shape
    grey_levels = (ours - theirs).abs() * torch.tensor(std).view(-1, 1, 1) * 255
    assert grey_levels.max() <= 1.0 + 1e-3, f"{grey_levels.max():.3f} grey levels apart"
