"""Backbones: a factory around timm and the sources its pretrained weights come from."""
from models.factory import create_model, data_config
from models.weights import WEIGHT_SOURCES, parse_weights

__all__ = ["create_model", "data_config", "WEIGHT_SOURCES", "parse_weights"]
