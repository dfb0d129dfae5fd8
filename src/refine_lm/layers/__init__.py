"""Modules with parameters: token mixers (the fast-weight layers) and their building blocks."""

from .common import GatedMLP, GatedRMSNorm, Recurrence, RMSNorm, ShortConvolution
from .delta_net import DeltaNet, GatedDeltaNet

__all__ = ["DeltaNet", "GatedDeltaNet", "GatedMLP", "GatedRMSNorm", "RMSNorm", "Recurrence", "ShortConvolution"]
