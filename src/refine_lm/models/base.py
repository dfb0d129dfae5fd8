"""What every fast-weight causal LM here shares: blocks, the state API, sliced LM-head statistics, generation.

An architecture contributes a config class and a token mixer (see ``delta_net.py``); this module
turns it into a Hugging Face model with the API the REFINE trainer stands on:

- ``model(input_ids, state=..., state_positions=...)`` reads a batch from an optional initial
  state and returns the final hidden states, the new state, and (differentiably) the states
  after any requested prefix lengths;
- long inputs are read in segments of ``segment_len`` tokens that carry the state, so a prefill
  that keeps only the last hidden state uses memory independent of its length;
- logits, cross-entropy and entropy are computed ``logits_slice_len`` tokens at a time;
- padded batches (left or right) are read as if every row were alone;
- ``step`` reads one token per row, ``generate`` samples with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers.common import GatedMLP, OwnInitialisation, Recurrence, RMSNorm, ShortConvolution
from ..ops.dtypes import compute_dtype
from ..ops.lm_head import IGNORE_INDEX, token_logprobs
from ..ops.sampling import sample_tokens
from ..state import ModelState, StateQuery

HiddenMode = Literal["all", "last", "none"]
# settings PretrainedConfig itself takes (and writes to config.json)
_BASE_CONFIG_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings")


class FastWeightConfig(PretrainedConfig):
    """A Hugging Face config whose settings and defaults are one table, ``fields`` (names as the reference
    library's, so its config.json files load). A setting passed that is not in the table is kept, as
    Hugging Face configs keep unknown keys; :func:`~refine_lm.models.registry.build_config` refuses them."""

    fields: ClassVar[dict[str, Any]] = {}
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(self, **kwargs):
        base = {}
        for name, default in self.fields.items():
            value = kwargs.pop(name, copy.deepcopy(default))
            if name in _BASE_CONFIG_FIELDS:
                base[name] = value
            else:
                setattr(self, name, value)
        super().__init__(**base, **kwargs)


class FastWeightBlock(nn.Module):
    """Pre-norm block: ``x + mixer(norm(x))`` then ``x + SwiGLU(norm(x))``."""

    def __init__(self, config: PretrainedConfig, layer_idx: int, mixer_class: type[nn.Module]):
        super().__init__()
        if getattr(config, "hidden_act", "swish") not in ("swish", "silu"):
            raise ValueError(f"hidden_act must be 'swish', got {config.hidden_act!r}")
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = mixer_class(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.hidden_ratio, config.intermediate_size)

    def forward(self, x: Tensor, state, query: StateQuery | None, recurrence: Recurrence):
        h, state, at_query = self.attn(self.attn_norm(x), state, query, recurrence)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state, at_query

    def step(self, x: Tensor, state):
        h, state = self.attn.step(self.attn_norm(x), state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class FastWeightPreTrainedModel(PreTrainedModel):
    """Weight initialisation shared by all architectures (flash-linear-attention's scheme)."""

    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["FastWeightBlock"]
    mixer_class: ClassVar[type[nn.Module]]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, ShortConvolution)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        if isinstance(module, OwnInitialisation):  # e.g. Gated DeltaNet's decays, LaCT's initial fast weights
            module.init_own_parameters()


@dataclass
class FastWeightModelOutput(ModelOutput):
    last_hidden_state: Tensor | None = None
    state: ModelState | None = None
    query_state: ModelState | None = None


class FastWeightModel(FastWeightPreTrainedModel):
    """Embeddings, the stack of blocks and the final norm (no LM head). Reads one segment."""

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        if getattr(config, "attn", None) is not None:
            raise ValueError("hybrid models with softmax-attention layers (config.attn) are not supported by refine-lm")
        if getattr(config, "attnres_block_size", None) is not None:
            raise ValueError(
                f"attnres_block_size={config.attnres_block_size}: fla's attention residuals (depth-wise attention "
                "over earlier layers' outputs) are not supported by refine-lm; only attnres_block_size: null loads"
            )
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(FastWeightBlock(config, i, self.mixer_class) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> ModelState:
        """The empty memory (all zeros) for ``batch_size`` sequences."""
        dtype = dtype or compute_dtype(self.embeddings.weight)
        return ModelState([block.attn.init_state(batch_size, device, dtype) for block in self.layers])

    def forward(
        self,
        input_ids: Tensor,
        state: ModelState | None = None,
        query: StateQuery | None = None,
        recurrence: Recurrence = Recurrence(),
    ) -> FastWeightModelOutput:
        x = self.embeddings(input_ids)
        layer_states = [None] * len(self.layers) if state is None else state.layers
        if len(layer_states) != len(self.layers):
            raise ValueError(f"state has {len(layer_states)} layers, model has {len(self.layers)}")
        new_states, query_states = [], []
        for block, layer_state in zip(self.layers, layer_states):
            x, layer_state, at_query = block(x, layer_state, query, recurrence)
            new_states.append(layer_state)
            query_states.append(at_query)
        return FastWeightModelOutput(
            last_hidden_state=self.norm(x),
            state=ModelState(new_states),
            query_state=None if query is None else ModelState(query_states),
        )

    def step(self, input_ids: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """Read one token per row: ``input_ids [B]`` -> ``(final hidden [B, D], new state)``."""
        x = self.embeddings(input_ids)
        new_states = []
        for block, layer_state in zip(self.layers, state.layers):
            x, layer_state = block.step(x, layer_state)
            new_states.append(layer_state)
        return self.norm(x), ModelState(new_states)


@dataclass
class FastWeightLMOutput(ModelOutput):
    """Output of :meth:`FastWeightForCausalLM.forward`.

    loss: mean next-token cross-entropy over non-ignored labels (when labels are given).
    logits: ``[B, L, V]`` (or ``[B, 1, V]`` with ``return_hidden="last"``) when asked for.
    last_hidden_state: final-norm hidden states (the LM head's input), ``[B, L, D]``, or ``[B, 1, D]``
        at each row's last real token with ``return_hidden="last"``.
    state: the memory after each row's last real token.
    position_states: with ``state_positions [B, P]``, the memory after reading ``x[b, :p]``, batch
        ``B * P`` in row-major order (row ``b * P + j`` is sequence b, position j).
    num_tokens: how many labels the loss averages over.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    state: ModelState | None = None
    position_states: ModelState | None = None
    num_tokens: int | None = None


@dataclass
class GenerationOutput:
    """tokens ``[B, T]`` (padding after an end-of-sequence token), lengths ``[B]`` (tokens up to and
    including the first EOS), logprobs ``[B, T]`` (the model's log-probability of each token at the
    sampling temperature, before top-k / top-p; 0 after EOS), hidden_states ``[B, T, D]`` (final-norm
    hidden state after reading each generated token), state (memory after the last generated token)."""

    tokens: Tensor
    lengths: Tensor
    logprobs: Tensor | None = None
    hidden_states: Tensor | None = None
    state: ModelState | None = None


@dataclass
class _Padding:
    starts: Tensor  # [B] index of the first real token
    lengths: Tensor  # [B] number of real tokens


_IGNORED_HF_KWARGS = {"use_cache", "return_dict", "output_attentions", "output_hidden_states", "past_key_values"}


class FastWeightForCausalLM(FastWeightPreTrainedModel):
    """A fast-weight causal LM with the recurrent-state API (see the module docstring)."""

    model_class: ClassVar[type[FastWeightModel]]
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.recurrence = Recurrence()
        self.segment_len = 4096
        self.logits_slice_len = 2048
        # forward-equivalent tokens read so far (x3 when gradients are on: forward + backward);
        # trainers log its increase per step so compute budgets can be compared honestly
        self.compute_tokens = 0
        self.post_init()

    # ----- Hugging Face plumbing --------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def set_backend(self, backend: str, chunk_size: int | None = None) -> FastWeightForCausalLM:
        """Choose how sequences are read: ``chunk`` (default), ``naive`` (reference), ``fla`` or ``auto``."""
        self.recurrence = Recurrence(backend, chunk_size or self.recurrence.chunk_size)  # type: ignore[arg-type]
        return self

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> ModelState:
        return self.model.init_state(batch_size, device, dtype)

    # ----- reading sequences ------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        state: ModelState | None = None,
        state_positions: Tensor | None = None,
        return_logits: bool = True,
        return_hidden: HiddenMode = "all",
        **kwargs,
    ) -> FastWeightLMOutput:
        """Read ``input_ids [B, L]`` (after ``state``, if given).

        attention_mask: ``[B, L]`` of 0/1 with each row's 1s contiguous (left or right padding);
            padding never enters the memory, and the loss never counts it.
        labels: ``[B, L]`` targets aligned with ``input_ids`` (shifted inside, Hugging Face style);
            ``-100`` is ignored.
        state_positions: ``[B, P]`` prefix lengths (column indices, 0..L) at which to return states.
        return_logits: build full logits (``[B, L, V]``; leave False for long sequences: the loss
            never needs them).
        return_hidden: ``all`` hidden states, only the ``last`` real one per row, or ``none``.
        """
        _check_forward_inputs(input_ids, return_hidden, kwargs)
        B, L = input_ids.shape
        device = input_ids.device
        self.compute_tokens += B * L * (3 if torch.is_grad_enabled() else 1)
        padding = _padding_layout(attention_mask, B, L)
        starts = padding.starts if padding is not None else torch.zeros(B, dtype=torch.long, device=device)
        lengths = padding.lengths if padding is not None else torch.full((B,), L, dtype=torch.long, device=device)
        left_padded = bool(starts.any())
        if left_padded:  # read left-padded rows as right-padded ones: real tokens first
            input_ids = _shift_rows(input_ids, starts)
            labels = None if labels is None else _shift_rows(labels, starts)
        targets = None if labels is None else _next_token_targets(labels, input_ids, lengths)
        plan = _QueryPlan.build(padding is not None, state_positions, starts, lengths, B)

        hidden_pieces: list[Tensor] = []
        last_hidden = None
        if return_hidden == "last":
            last_hidden = torch.zeros(B, self.config.hidden_size, device=device, dtype=self.lm_head.weight.dtype)
        found: list[tuple[Tensor, ModelState]] = []
        nll = input_ids.new_zeros((), dtype=torch.float32)
        num_tokens = 0
        for s0 in range(0, L, self.segment_len):
            s1 = min(L, s0 + self.segment_len)
            idx, query = plan.inside(s0, s1)
            out = self.model(input_ids[:, s0:s1], state=state, query=query, recurrence=self.recurrence)
            state = out.state
            if query is not None:
                found.append((idx, out.query_state))
            h = out.last_hidden_state
            if return_hidden == "all":
                hidden_pieces.append(h)
            elif return_hidden == "last":
                ends_here = ((lengths - 1 >= s0) & (lengths - 1 < s1)).nonzero()[:, 0]
                last_hidden = last_hidden.to(h.dtype).index_put((ends_here,), h[ends_here, lengths[ends_here] - 1 - s0])
            if targets is not None:
                seg_targets = targets[:, s0:s1]
                nll = nll - token_logprobs(h, self.lm_head.weight, seg_targets, slice_len=self.logits_slice_len).sum()
                num_tokens += int((seg_targets != IGNORE_INDEX).sum())
        final_state, position_states = plan.answers(found, state, B)

        hidden = None
        if return_hidden == "all":
            hidden = torch.cat(hidden_pieces, dim=1)
            if padding is not None:
                real = torch.arange(L, device=device)[None, :] < lengths[:, None]
                hidden = hidden * real[..., None].to(hidden.dtype)
            if left_padded:
                hidden = _shift_rows(hidden, -starts)
        elif return_hidden == "last":
            hidden = last_hidden[:, None]
        logits = None
        if return_logits:
            if hidden is None:
                raise ValueError("return_logits needs return_hidden='all' or 'last'")
            logits = self.lm_head(hidden)
        loss = nll / max(num_tokens, 1) if targets is not None else None
        return FastWeightLMOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=hidden,
            state=final_state,
            position_states=position_states,
            num_tokens=num_tokens if targets is not None else None,
        )

    def step(self, input_ids: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """Read one token per row with the recurrent form: ``[B]`` -> ``(hidden [B, D], new state)``."""
        self.compute_tokens += input_ids.numel() * (3 if torch.is_grad_enabled() else 1)
        return self.model.step(input_ids, state)

    # ----- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        state: ModelState | None = None,
        last_hidden: Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        return_logprobs: bool = False,
        return_hidden: bool = False,
        return_state: bool = False,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
    ) -> GenerationOutput:
        """Batched generation with the recurrent step (greedy unless ``do_sample``).

        Start from a prompt (``input_ids`` with an optional ``attention_mask``, read from ``state``
        if given), or directly from a memory: ``state`` plus ``last_hidden [B, D]``, the final
        hidden state at the last token read (this is how rollouts start from cached snapshots).
        Sampling draws from ``generator``, or takes its random numbers from ``uniforms [B, max_new_tokens]``
        (in [0, 1): row b's token j inverts its distribution at ``uniforms[b, j]``).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if input_ids is not None:
            out = self(input_ids, attention_mask, state=state, return_logits=False, return_hidden="last")
            state, hidden = out.state, out.last_hidden_state[:, 0]
        elif state is not None and last_hidden is not None:
            hidden = last_hidden
        else:
            raise ValueError("generate() needs input_ids, or a state together with last_hidden")
        B = hidden.shape[0]
        eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=hidden.device).reshape(-1)
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
        finished = torch.zeros(B, dtype=torch.bool, device=hidden.device)
        lengths = torch.zeros(B, dtype=torch.long, device=hidden.device)
        tokens, logprobs, hiddens = [], [], []
        for j in range(max_new_tokens):
            token, logprob = sample_tokens(
                self.lm_head(hidden),
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                uniforms=None if uniforms is None else uniforms[:, j],
            )
            token = token.masked_fill(finished, pad_token_id)
            logprobs.append(logprob.masked_fill(finished, 0.0))
            tokens.append(token)
            lengths += (~finished).long()
            finished = finished | torch.isin(token, eos)
            last = j == max_new_tokens - 1 or bool(finished.all())
            if not last or return_hidden or return_state:
                hidden, state = self.step(token, state)
                hiddens.append(hidden)
            if last:
                break
        return GenerationOutput(
            tokens=torch.stack(tokens, dim=1),
            lengths=lengths,
            logprobs=torch.stack(logprobs, dim=1) if return_logprobs else None,
            hidden_states=torch.stack(hiddens, dim=1) if return_hidden else None,
            state=state if return_state else None,
        )


def _check_forward_inputs(input_ids: Tensor, return_hidden: str, kwargs: dict) -> None:
    unknown = set(kwargs) - _IGNORED_HF_KWARGS
    if unknown:
        raise TypeError(f"forward() got unexpected arguments: {sorted(unknown)}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, length] with length >= 1, got shape {tuple(input_ids.shape)}")
    if return_hidden not in ("all", "last", "none"):
        raise ValueError(f"return_hidden must be 'all', 'last' or 'none', got {return_hidden!r}")


def _next_token_targets(labels: Tensor, input_ids: Tensor, lengths: Tensor) -> Tensor:
    """``labels`` shifted left by one (Hugging Face style), ignored from each row's last real token on."""
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
    B, L = labels.shape
    targets = torch.cat([labels[:, 1:], labels.new_full((B, 1), IGNORE_INDEX)], dim=1)
    beyond = torch.arange(L, device=labels.device)[None, :] >= (lengths - 1)[:, None]
    return targets.masked_fill(beyond, IGNORE_INDEX)


@dataclass
class _QueryPlan:
    """The states one forward must return: each padded row's final state (``with_final``), then the states
    at the requested positions, row-major; as (row, prefix length) pairs answered segment by segment."""

    rows: Tensor | None
    prefix: Tensor | None
    with_final: bool
    num_positions: int

    @classmethod
    def build(cls, with_final: bool, state_positions: Tensor | None, starts: Tensor, lengths: Tensor, B: int) -> _QueryPlan:
        device = lengths.device
        rows, prefix = [], []
        if with_final:
            rows.append(torch.arange(B, device=device))
            prefix.append(lengths)
        num_positions = 0
        if state_positions is not None:
            positions = _check_positions(state_positions, starts, lengths, B)
            num_positions = positions.shape[1]
            rows.append(torch.arange(B, device=device).repeat_interleave(num_positions))
            prefix.append(positions.reshape(-1))
        if not rows:
            return cls(None, None, with_final, 0)
        return cls(torch.cat(rows), torch.cat(prefix), with_final, num_positions)

    def inside(self, s0: int, s1: int) -> tuple[Tensor | None, StateQuery | None]:
        """The queries that segment ``[s0, s1)`` answers (their indices in the plan), lengths made segment-relative."""
        if self.rows is None:
            return None, None
        inside = ((self.prefix > s0) & (self.prefix <= s1)) | ((self.prefix == 0) & (s0 == 0))
        idx = inside.nonzero()[:, 0]
        if not idx.numel():
            return None, None
        return idx, StateQuery(self.rows[idx], self.prefix[idx] - s0)

    def answers(self, found: list[tuple[Tensor, ModelState]], final: ModelState, B: int) -> tuple[ModelState, ModelState | None]:
        """(final state per row, states at the positions), reassembled in plan order from the segments' answers."""
        if not found:
            return final, None
        order = torch.cat([i for i, _ in found])
        answered = ModelState.cat([s for _, s in found]).index(torch.argsort(order))
        if self.with_final:
            final = answered.index(slice(0, B))
        positions = answered.index(slice(B if self.with_final else 0, None)) if self.num_positions else None
        return final, positions


def _padding_layout(mask: Tensor | None, B: int, L: int) -> _Padding | None:
    """Starts and lengths of each row's real tokens; None when there is no padding."""
    if mask is None:
        return None
    if tuple(mask.shape) != (B, L):
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {(B, L)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must contain only 0 and 1")
    real = mask.bool()
    lengths = real.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"attention_mask rows {(lengths == 0).nonzero()[:, 0].tolist()} have no tokens")
    starts = real.long().argmax(1)
    cols = torch.arange(L, device=mask.device)[None, :]
    contiguous = (real == ((cols >= starts[:, None]) & (cols < (starts + lengths)[:, None]))).all(1)
    if not bool(contiguous.all()):
        bad = (~contiguous).nonzero()[:, 0].tolist()
        raise ValueError(f"attention_mask rows {bad} are not one contiguous run of 1s (pad on the left or the right only)")
    if bool((lengths == L).all()):
        return None
    return _Padding(starts, lengths)


def _shift_rows(x: Tensor, shift: Tensor) -> Tensor:
    """Row b becomes ``x[b, (t + shift[b]) mod L]``: ``shift = starts`` moves left padding to the right."""
    L = x.shape[1]
    cols = (torch.arange(L, device=x.device)[None, :] + shift[:, None]) % L
    index = cols.reshape(*cols.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def _check_positions(positions: Tensor, starts: Tensor, lengths: Tensor, B: int) -> Tensor:
    if positions.dim() != 2 or positions.shape[0] != B:
        raise ValueError(f"state_positions must be [batch={B}, P], got shape {tuple(positions.shape)}")
    relative = positions.long() - starts[:, None]
    bad = (relative < 0) | (relative > lengths[:, None])
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"state_positions[{b}, {j}] = {int(positions[b, j])} lies outside the real tokens of row {b} "
            f"(columns {int(starts[b])}..{int(starts[b] + lengths[b])})"
        )
    return relative
