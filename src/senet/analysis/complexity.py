"""Parameter and FLOP counts, compared with the paper's figures (Table 2, Table 3, Sec. 9 of the reference).

FLOPs are counted as the paper counts them: multiply-adds of one forward pass of one image. torch's
``FlopCounterMode`` counts convolutions and matrix products (2 FLOPs per multiply-add); pooling,
activations and the SE rescale are not counted, as they are negligible next to the convolutions.
Counting runs on the ``meta`` device, so no memory is allocated and no arithmetic is done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from senet.models.registry import create_model, list_models, model_info


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``in_chans x input_size x input_size`` image, in eval mode."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_chans, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Complexity:
    """Measured size and cost of one registered model next to the paper's figures."""

    name: str
    dataset: str  # what the reference errors were measured on
    input_size: int
    params: int
    gflops: float
    paper_params: float | None  # millions
    paper_gflops: float | None
    paper_top1_err: float | None
    paper_top5_err: float | None

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def params_diff(self) -> float | None:
        """Relative difference of our parameter count from the paper's (0.01 = 1%)."""
        return None if self.paper_params is None else self.params_m / self.paper_params - 1

    @property
    def gflops_diff(self) -> float | None:
        return None if self.paper_gflops is None else self.gflops / self.paper_gflops - 1

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "params_m": round(self.params_m, 4),
            "params_diff": self.params_diff,
            "gflops_diff": self.gflops_diff,
        }


_DATASETS = {1000: "ImageNet", 10: "CIFAR-10", 100: "CIFAR-100"}


def model_complexity(name: str, input_size: int | None = None, **options) -> Complexity:
    """Count params and GFLOPs of registered model ``name`` at ``input_size`` (default: the paper's)."""
    info = model_info(name)
    size = input_size or info.paper.input_size
    with torch.device("meta"):
        model = create_model(info.name, **options)
    return Complexity(
        name=info.name,
        dataset=_DATASETS.get(info.num_classes, f"{info.num_classes} classes"),
        input_size=size,
        params=count_params(model),
        gflops=count_macs(model, size, options.get("in_chans", 3)) / 1e9,
        paper_params=info.paper.params_m,
        paper_gflops=info.paper.gflops,
        paper_top1_err=info.paper.top1_err,
        paper_top5_err=info.paper.top5_err,
    )


def complexity_table(pattern: str = "*") -> list[Complexity]:
    """One :class:`Complexity` per registered model matching ``pattern``."""
    return [model_complexity(name) for name in list_models(pattern)]
