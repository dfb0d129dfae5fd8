"""refine-lm: REFINE (reinforced next-sequence prediction) for fast-weight language models."""

from .layers.common import Recurrence
from .models import (
    DeltaNetConfig,
    DeltaNetForCausalLM,
    FastWeightForCausalLM,
    GatedDeltaNetConfig,
    GatedDeltaNetForCausalLM,
    GenerationOutput,
)
from .state import DeltaRuleState, ModelState, StateQuery, TensorState

__version__ = "0.1.0"

__all__ = [
    "DeltaNetConfig",
    "DeltaNetForCausalLM",
    "DeltaRuleState",
    "FastWeightForCausalLM",
    "GatedDeltaNetConfig",
    "GatedDeltaNetForCausalLM",
    "GenerationOutput",
    "ModelState",
    "Recurrence",
    "StateQuery",
    "TensorState",
    "__version__",
]
