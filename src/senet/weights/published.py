"""Published PyTorch weights of the paper's networks, for ``create_model(name, pretrained=True)``.

Each entry names the project that published the file, its model name there and the URL. The file name ends in
the first hex digits of its SHA-256 (torch.hub's convention, which ``torch.utils.model_zoo`` checked when
these files were published), and the download is checked against them. A file is fetched once into torch's hub
cache (``$TORCH_HOME/hub/checkpoints``), converted once (``senet/<model>-<hash>.safetensors`` beside it),
and loaded from there afterwards, offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from senet.fileio import first_line
from senet.models.registry import model_info
from senet.weights.convert import convert_file, file_sha256

_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
_TORCHVISION = "https://download.pytorch.org/models/"
_TIMM = "https://github.com/huggingface/pytorch-image-models/releases/download/"


@dataclass(frozen=True)
class Published:
    project: str  # a source project of senet convert
    name: str  # the model's name there
    url: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        match = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", self.file_name)
        assert match, f"published file {self.file_name} carries no hash"
        return match.group(1)


# Our registered name -> the weights that build it exactly (through senet convert's table). torchvision's
# ImageNet weights are its IMAGENET1K_V1 set; they load into our plain ResNets with torchvision's
# layout options.
PUBLISHED: dict[str, Published] = {
    "se_resnet50": Published("pretrainedmodels", "se_resnet50", _CADENE + "se_resnet50-ce0d4300.pth"),
    "se_resnet101": Published("pretrainedmodels", "se_resnet101", _CADENE + "se_resnet101-7e38fcc6.pth"),
    "se_resnet152": Published("pretrainedmodels", "se_resnet152", _CADENE + "se_resnet152-d17c99b7.pth"),
    "se_resnext50_32x4d": Published(
        "pretrainedmodels", "se_resnext50_32x4d", _CADENE + "se_resnext50_32x4d-a260b3a4.pth"
    ),
    "se_resnext101_32x4d": Published(
        "pretrainedmodels", "se_resnext101_32x4d", _CADENE + "se_resnext101_32x4d-3b2fe3d8.pth"
    ),
    "senet154": Published("pretrainedmodels", "senet154", _CADENE + "senet154-c7b49a05.pth"),
    "seresnet50": Published("timm", "seresnet50", _TIMM + "v0.1-rsb-weights/seresnet50_a1_0-ffa00869.pth"),
    "resnet18": Published("torchvision", "resnet18", _TORCHVISION + "resnet18-f37072fd.pth"),
    "resnet34": Published("torchvision", "resnet34", _TORCHVISION + "resnet34-b627a593.pth"),
    "resnet50": Published("torchvision", "resnet50", _TORCHVISION + "resnet50-0676ba61.pth"),
    "resnet101": Published("torchvision", "resnet101", _TORCHVISION + "resnet101-63fe2227.pth"),
    "resnet152": Published("torchvision", "resnet152", _TORCHVISION + "resnet152-394f9c45.pth"),
    "resnext50_32x4d": Published(
        "torchvision", "resnext50_32x4d", _TORCHVISION + "resnext50_32x4d-7cdf4587.pth"
    ),
    "vgg16_bn": Published("torchvision", "vgg16_bn", _TORCHVISION + "vgg16_bn-6c64b313.pth"),
}


def _download(url: str, destination: Path, sha256_prefix: str) -> None:
    """Fetch ``url`` into ``destination`` (torch.hub writes a temp file and renames it when
    the hash matches)."""
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=sha256_prefix, progress=True)


def hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def published_weights(name: str) -> Path:
    """The senet weights file of ``name``'s published weights: converted from the hub cache,
    fetched if absent.

    Without network (or with a file that fails its hash), one line names the file to place and the
    ``senet convert`` command that does the same by hand.
    """
    canonical = model_info(name).name  # aliases resolve; an unknown name lists the closest ones
    entry = PUBLISHED.get(canonical)
    if entry is None:
        raise ValueError(
            f"no published weights are listed for {canonical} (listed: {', '.join(PUBLISHED)}); "
            "convert a file you have with `senet convert` and pass its path as pretrained=PATH"
        )
    converted = hub_dir() / "senet" / f"{canonical}-{entry.sha256_prefix}.safetensors"
    if converted.is_file():
        return converted
    source = hub_dir() / entry.file_name
    manual = (
        f"place {entry.file_name} at {source}, or convert it yourself: senet convert --from {entry.project} "
        f"{entry.file_name} --model {entry.name} --out {canonical}.safetensors, then pretrained=that file"
    )
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(entry.url, source, entry.sha256_prefix)
        except Exception as error:  # URLError, HTTPError, a hash mismatch (RuntimeError), a full disk...
            first = first_line(error)
            raise FileNotFoundError(f"could not fetch {entry.url} ({first}); {manual}") from None
    digest = file_sha256(source)
    if not digest.startswith(entry.sha256_prefix):
        raise ValueError(
            f"{source} has SHA-256 {digest[:16]}..., not the published {entry.sha256_prefix}...: a damaged "
            f"or other file; delete it and retry, or {manual}"
        )
    convert_file(entry.project, entry.name, source, converted, sha256=digest)
    return converted
