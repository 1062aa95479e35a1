"""Weights from other projects and from our runs: conversion, the weights file and run-checkpoint formats,
``load_pretrained`` and ``create_model(name, pretrained=...)``."""

from senet.weights.convert import SOURCES, convert_file
from senet.weights.info import WeightsInfo, read_weights_file, save_weights_file
from senet.weights.pretrained import create_model, load_pretrained

__all__ = [
    "SOURCES",
    "WeightsInfo",
    "convert_file",
    "create_model",
    "load_pretrained",
    "read_weights_file",
    "save_weights_file",
]
