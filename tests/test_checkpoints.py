"""Hugging Face round-trips, the Auto classes, and loading directories written by flash-linear-attention."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from refine_lm import DeltaNetForCausalLM, GatedDeltaNetForCausalLM
from refine_lm.models import DeltaNetModel
from refine_lm.models.registry import build_model, load_model

from .conftest import random_ids, tiny_model

# config.json as flash-linear-attention (with transformers 4.48) writes it for a DeltaNet
FLA_DELTA_NET_CONFIG = {
    "architectures": ["DeltaNetForCausalLM"],
    "attn": None,
    "attn_mode": "chunk",
    "bos_token_id": 1,
    "conv_size": 4,
    "eos_token_id": 2,
    "expand_k": 1,
    "expand_v": 1,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "hidden_act": "swish",
    "hidden_ratio": 4,
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "max_position_embeddings": 2048,
    "model_type": "delta_net",
    "norm_eps": 1e-06,
    "num_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 2,
    "qk_activation": "silu",
    "qk_norm": "l2",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.48.2",
    "use_beta": True,
    "use_cache": True,
    "use_gate": False,
    "use_l2warp": False,
    "use_output_norm": True,
    "use_short_conv": True,
    "vocab_size": 512,
}


def fla_delta_net_tensors(hidden=64, heads=4, layers=2, vocab=512, intermediate=256, conv=4) -> dict[str, torch.Tensor]:
    """Tensor names and shapes of an fla DeltaNet checkpoint (intermediate = 2/3 * 4 * 64 rounded up to 256)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embeddings.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (hidden,),
            p + "attn.q_proj.weight": (hidden, hidden),
            p + "attn.k_proj.weight": (hidden, hidden),
            p + "attn.v_proj.weight": (hidden, hidden),
            p + "attn.b_proj.weight": (heads, hidden),
            p + "attn.q_conv1d.weight": (hidden, 1, conv),
            p + "attn.k_conv1d.weight": (hidden, 1, conv),
            p + "attn.v_conv1d.weight": (hidden, 1, conv),
            p + "attn.o_norm.weight": (hidden // heads,),
            p + "attn.o_proj.weight": (hidden, hidden),
            p + "mlp_norm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    return {name: (torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16) for name, shape in shapes.items()}


def test_fla_delta_net_directory_loads_unchanged(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FLA_DELTA_NET_CONFIG, indent=2))
    tensors = fla_delta_net_tensors()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, DeltaNetForCausalLM)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    params = dict(model.named_parameters())
    assert set(params) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(params[name].detach().to(torch.bfloat16), tensor), name
    model.float()
    out = model(random_ids(1, 10), labels=random_ids(1, 10))
    assert torch.isfinite(out.loss)
    # and through the project's loader, in fp32
    assert load_model(tmp_path).lm_head.weight.dtype == torch.float32


def test_save_load_round_trip(tmp_path, arch):
    model = tiny_model(arch, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    loaded.set_backend("chunk", chunk_size=8)  # the recurrence settings are run-time choices, not saved
    ids = random_ids(2, 19)
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_auto_classes_know_both_architectures():
    for model_type, lm_class in (("delta_net", DeltaNetForCausalLM), ("gated_deltanet", GatedDeltaNetForCausalLM)):
        config = AutoConfig.for_model(model_type, hidden_size=32, num_heads=2, head_dim=16, num_hidden_layers=1, vocab_size=64)
        assert isinstance(AutoModelForCausalLM.from_config(config), lm_class)
    base = AutoModel.from_config(
        AutoConfig.for_model("delta_net", hidden_size=32, num_heads=2, num_hidden_layers=1, vocab_size=64)
    )
    assert isinstance(base, DeltaNetModel)


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_model("delta_net", dtype=torch.float32, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embeddings.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


# every field of flash-linear-attention 0.6's DeltaNetConfig and GatedDeltaNetConfig (their __init__ signatures)
FLA_06_DELTA_NET_FIELDS = str.split(
    "attn_mode hidden_size expand_k expand_v use_gate use_short_conv allow_neg_eigval conv_size use_beta use_output_norm "
    "num_heads qk_norm qk_activation max_position_embeddings hidden_ratio intermediate_size hidden_act num_hidden_layers "
    "norm_eps attn use_cache pad_token_id bos_token_id eos_token_id tie_word_embeddings initializer_range fuse_norm "
    "fuse_swiglu fuse_cross_entropy fuse_linear_cross_entropy vocab_size attnres_block_size"
)
FLA_06_GATED_DELTANET_FIELDS = str.split(
    "attn_mode hidden_size expand_v use_gate use_short_conv allow_neg_eigval conv_size head_dim num_heads num_v_heads "
    "max_position_embeddings hidden_ratio intermediate_size hidden_act num_hidden_layers norm_eps attn use_cache "
    "pad_token_id bos_token_id eos_token_id tie_word_embeddings initializer_range fuse_norm fuse_swiglu fuse_cross_entropy "
    "fuse_linear_cross_entropy use_l2warp vocab_size attnres_block_size output_gate_activation"
)


def test_every_fla_config_field_is_known():
    from refine_lm.models import DeltaNetConfig, GatedDeltaNetConfig

    assert set(FLA_06_DELTA_NET_FIELDS) <= set(DeltaNetConfig.fields)
    assert set(FLA_06_GATED_DELTANET_FIELDS) <= set(GatedDeltaNetConfig.fields)


def test_sum_qk_norm_divides_by_the_floored_l1_norm_as_fla():
    """fla's sum_norm is ``F.normalize(x, p=1, eps=1e-6)``: a ReLU'd key that is all zero stays zero, not NaN."""
    model = tiny_model("delta_net", qk_norm="sum", qk_activation="relu")
    mixer = model.model.layers[0].attn
    with torch.no_grad():
        mixer.k_proj.weight[:16] = -mixer.k_proj.weight[:16].abs()  # head 0's keys: negative for positive inputs
    x = torch.rand(1, 6, 64, dtype=torch.float64)
    _, k, *_ = mixer._heads(x, mixer._project(x))
    assert torch.equal(k[..., 0, :], torch.zeros_like(k[..., 0, :]))
    assert torch.allclose(k.abs().sum(-1)[..., 1:], torch.ones(1, 6, 3, dtype=torch.float64))
    assert torch.isfinite(model(random_ids(1, 12)).logits).all()


def test_sigmoid_output_gate_of_gated_deltanet():
    ids = random_ids(1, 12)
    swish = tiny_model("gated_deltanet")
    sigmoid = tiny_model("gated_deltanet", output_gate_activation="sigmoid")
    sigmoid.load_state_dict(swish.state_dict())
    norm = sigmoid.model.layers[0].attn.o_norm
    x, gate = (torch.randn(3, norm.weight.numel(), dtype=torch.float64) for _ in range(2))
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight * torch.sigmoid(gate)
    assert torch.allclose(norm(x, gate), expected)
    assert not torch.allclose(swish(ids).logits, sigmoid(ids).logits, atol=1e-3)
    with pytest.raises(ValueError, match="output_gate_activation"):
        tiny_model("gated_deltanet", output_gate_activation="tanh")


def test_attention_residuals_are_refused_by_name():
    for arch in ("delta_net", "gated_deltanet"):
        with pytest.raises(ValueError, match="attnres_block_size=2"):
            tiny_model(arch, attnres_block_size=2)


def test_expanded_key_and_value_dims_round_as_fla():
    # 100 * 0.29 is 28.999999999999996 in floating point: fla rounds it to 29
    model = build_model("delta_net", "tiny", hidden_size=100, num_heads=1, expand_k=0.29, expand_v=0.29)
    assert model.model.layers[0].attn.key_dim == 29 and model.model.layers[0].attn.value_dim == 29
    with pytest.raises(ValueError, match="expand_k"):
        build_model("delta_net", "tiny", expand_k=0.3)  # 64 * 0.3 = 19.2
