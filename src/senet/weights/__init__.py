"""Weights from other projects and from our runs: conversion, the weights file format, ``load_pretrained``."""

from senet.weights.convert import SOURCES, convert_file
from senet.weights.info import WeightsInfo, read_weights_file, save_weights_file
from senet.weights.pretrained import load_pretrained

__all__ = [
    "SOURCES",
    "WeightsInfo",
    "convert_file",
    "load_pretrained",
    "read_weights_file",
    "save_weights_file",
]
