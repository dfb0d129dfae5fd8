"""Causal LMs built from the layers, registered with the Hugging Face Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .base import FastWeightForCausalLM, FastWeightLMOutput, FastWeightModel, GenerationOutput
from .delta_net import DeltaNetConfig, DeltaNetForCausalLM, DeltaNetModel
from .gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, GatedDeltaNetModel
from .lact import LaCTConfig, LaCTForCausalLM, LaCTModel

for _config, _model, _lm in (
    (DeltaNetConfig, DeltaNetModel, DeltaNetForCausalLM),
    (GatedDeltaNetConfig, GatedDeltaNetModel, GatedDeltaNetForCausalLM),
    (LaCTConfig, LaCTModel, LaCTForCausalLM),
):
    # exist_ok: flash-linear-attention (or lact_llm) registers the same model types; whichever is imported last wins
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

__all__ = [
    "DeltaNetConfig",
    "DeltaNetForCausalLM",
    "DeltaNetModel",
    "FastWeightForCausalLM",
    "FastWeightLMOutput",
    "FastWeightModel",
    "GatedDeltaNetConfig",
    "GatedDeltaNetForCausalLM",
    "GatedDeltaNetModel",
    "GenerationOutput",
    "LaCTConfig",
    "LaCTForCausalLM",
    "LaCTModel",
]
