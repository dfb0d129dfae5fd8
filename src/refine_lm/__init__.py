"""refine-lm: REFINE (reinforced next-sequence prediction) for fast-weight language models."""

from .layers.common import Recurrence
from .models import (
    DeltaNetConfig,
    DeltaNetForCausalLM,
    FastWeightForCausalLM,
    GatedDeltaNetConfig,
    GatedDeltaNetForCausalLM,
    GenerationOutput,
    LaCTConfig,
    LaCTForCausalLM,
)
from .state import DeltaRuleState, FastWeightMemory, LaCTState, ModelState, StateQuery, TensorState, WindowCache

__version__ = "0.1.0"

__all__ = [
    "DeltaNetConfig",
    "DeltaNetForCausalLM",
    "DeltaRuleState",
    "FastWeightForCausalLM",
    "FastWeightMemory",
    "GatedDeltaNetConfig",
    "GatedDeltaNetForCausalLM",
    "GenerationOutput",
    "LaCTConfig",
    "LaCTForCausalLM",
    "LaCTState",
    "ModelState",
    "Recurrence",
    "StateQuery",
    "TensorState",
    "WindowCache",
    "__version__",
]
