"""Object detection with our networks as backbones: torchvision's Faster R-CNN + FPN, COCO data and metrics.

* :mod:`senet.detection.data`: COCO-format datasets (checked annotations, the category mapping, flips).
* :mod:`senet.detection.metrics`: AP / AP50 / AP75 / APs / APm / APl through pycocotools' COCOeval.
* :mod:`senet.detection.model`: ``build_detector`` (any ``features_only`` network under torchvision's FPN).
* :mod:`senet.detection.shapes`: a small COCO-format data set of drawn shapes (``senet data shapes``).
* :mod:`senet.detection.config`: ``DetectionConfig`` (Detectron's recipe), its flags' help and resume rules.
* :mod:`senet.detection.engine`: ``train(DetectionConfig)``, ``evaluate_run``, ``load_detector``; detection as
  a task of train/'s training lifecycle (``senet detect train`` / ``eval``).
* :mod:`senet.detection.predict`: boxes, labels and scores of image files, drawn on PNGs
  (``senet detect predict``).

pycocotools is needed for evaluation, which ends every training epoch (``pip install 'senet[detection]'``).
"""

from senet.detection.config import DetectionConfig
from senet.detection.data import CategoryMap, CocoDetection, coco_datasets, collate, resolve_coco_paths
from senet.detection.engine import evaluate_run, load_detector, train
from senet.detection.metrics import coco_evaluate
from senet.detection.model import build_detector, detector_from_options
from senet.detection.shapes import make_shapes

__all__ = [
    "CategoryMap",
    "CocoDetection",
    "DetectionConfig",
    "build_detector",
    "coco_datasets",
    "coco_evaluate",
    "collate",
    "detector_from_options",
    "evaluate_run",
    "load_detector",
    "make_shapes",
    "resolve_coco_paths",
    "train",
]
