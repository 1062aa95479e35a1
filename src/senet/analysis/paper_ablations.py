"""The paper's ablation figures (TPAMI version, Sec. 6 and 7, Tables 10-16), kept in the package so that
``senet ablate`` prints them beside a user's own results from an installed wheel.

All are SE-ResNet-50 / ResNet-50 on ImageNet, single 224 crop, top-1 / top-5 error in %, params in millions,
GFLOPs as printed (None where the table gives none). The ResNet ablations use SE blocks without biases
(Sec. 6: "the biases of the FC layers in the excitation operation are removed").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: the setting (build options of se_resnet50), its label and its figures."""

    label: str
    options: dict[str, Any]
    top1: float
    top5: float
    params_m: float | None = None
    gflops: float | None = None
    plain: bool = False  # the ResNet-50 baseline row (no SE blocks)


@dataclass(frozen=True)
class PaperStudy:
    name: str
    table: str
    rows: tuple[PaperRow, ...]
    reference: str  # the label of the setting the others are compared with (the paper's default SE)


_PLAIN = PaperRow("ResNet-50", {}, 23.30, 6.55, 25.6, 3.86, plain=True)

STUDIES: dict[str, PaperStudy] = {
    "reduction": PaperStudy(
        "reduction",
        "Table 10",
        (
            PaperRow("r = 2", {"se_reduction": 2}, 22.29, 6.00, 45.7),
            PaperRow("r = 4", {"se_reduction": 4}, 22.25, 6.09, 35.7),
            PaperRow("r = 8", {"se_reduction": 8}, 22.26, 5.99, 30.7),
            PaperRow("r = 16", {"se_reduction": 16}, 22.28, 6.03, 28.1),
            PaperRow("r = 32", {"se_reduction": 32}, 22.72, 6.20, 26.9),
            _PLAIN,
        ),
        reference="r = 16",
    ),
    "squeeze": PaperStudy(
        "squeeze",
        "Table 11",
        (
            PaperRow("Max", {"se_squeeze": "max"}, 22.57, 6.09),
            PaperRow("Avg", {"se_squeeze": "avg"}, 22.28, 6.03),
        ),
        reference="Avg",
    ),
    "excitation": PaperStudy(
        "excitation",
        "Table 12",
        (
            PaperRow("ReLU", {"se_gate": "relu"}, 23.47, 6.98),
            PaperRow("Tanh", {"se_gate": "tanh"}, 23.00, 6.38),
            PaperRow("Sigmoid", {"se_gate": "sigmoid"}, 22.28, 6.03),
        ),
        reference="Sigmoid",
    ),
    "stages": PaperStudy(
        "stages",
        "Table 13",
        (
            _PLAIN,
            PaperRow("SE Stage 2", {"se_stages": ("conv2_x",)}, 23.03, 6.48, 25.6, 3.86),
            PaperRow("SE Stage 3", {"se_stages": ("conv3_x",)}, 23.04, 6.32, 25.7, 3.86),
            PaperRow("SE Stage 4", {"se_stages": ("conv4_x",)}, 22.68, 6.22, 26.4, 3.86),
            PaperRow("SE All", {}, 22.28, 6.03, 28.1, 3.87),
        ),
        reference="SE All",
    ),
    "integration": PaperStudy(
        "integration",
        "Tables 14-15",
        (
            PaperRow("SE", {"se_position": "standard"}, 22.28, 6.03, 28.1, 3.87),
            PaperRow("SE-PRE", {"se_position": "pre"}, 22.23, 6.00),
            PaperRow("SE-POST", {"se_position": "post"}, 22.78, 6.35),
            PaperRow("SE-Identity", {"se_position": "identity"}, 22.20, 6.15),
            PaperRow("SE_3x3", {"se_position": "3x3"}, 22.48, 6.02, 25.8, 3.86),
        ),
        reference="SE",
    ),
    "nosqueeze": PaperStudy(
        "nosqueeze",
        "Table 16",
        (
            _PLAIN,
            PaperRow("NoSqueeze", {"se_squeeze": "none"}, 22.93, 6.39, 28.1, 4.27),
            PaperRow("SE", {}, 22.28, 6.03, 28.1, 3.87),
        ),
        reference="SE",
    ),
}
