"""Backbones: a factory around timm and the sources its pretrained weights come from."""
from models.factory import check_model, create_model, data_config, enable_grad_checkpointing
from models.weights import WEIGHT_SOURCES, check_weights, parse_weights

__all__ = ["check_model", "create_model", "data_config", "enable_grad_checkpointing", "WEIGHT_SOURCES", "check_weights",
           "parse_weights"]
