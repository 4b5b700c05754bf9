"""Other architectures on the arithmetic layout (issue 15): an LSTM and an encoder-decoder transformer,
built from torch's own `nn.LSTM` and `nn.TransformerEncoder` / `nn.TransformerDecoder`.

Both take the main model's input, token ids `(batch, pos)` in the layout of
`mechlab.arithmetic.tokenizer`, and return `(batch, pos, d_vocab)` logits whose position p predicts
token p + 1, so `answer_loss`, `exact_match`, `greedy_answers` and `evaluate_split` use them unchanged.

- LSTM: embeddings -> `nn.LSTM` -> linear readout. Causal by construction (position p has read
  tokens 0..p only).
- Encoder-decoder: the encoder reads the prompt, positions 0..EQUALS_POS (`<bos>`, the left-padded
  prompt, `=`), with full (bidirectional) self-attention. The decoder reads positions EQUALS_POS.. (`=`
  and the answer tokens so far) with causal self-attention and cross-attention to the encoded prompt,
  and its output at position p predicts token p + 1, as the main model's does. Before `=` a
  bidirectional encoder has no next-token prediction (it sees the next token), so the logits there
  are 0 (a uniform distribution); nothing trains or scores them (`answer_logits` starts at `=`).

Both register a model kind ("lstm", "encdec") so `core.model.build` and `load_checkpoint` rebuild them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mechlab.arithmetic.tokenizer import EQUALS_POS, N_ANSWER_TOKENS, VOCAB
from mechlab.core.model import build_module, check_vocab, register_model_kind


def _config_from_json(cls: type, obj: dict[str, Any]) -> Any:
    """`cls` (LSTMConfig or EncDecConfig) from its `to_json` dict: the "kind" tag dropped, the vocabulary a tuple."""
    obj = {k: v for k, v in obj.items() if k != "kind"}
    return cls(**obj | {"vocab": tuple(obj.get("vocab", ()))})


@dataclass(frozen=True)
class LSTMConfig:
    """Token embeddings (d_model) -> `n_layers` LSTM layers (d_model hidden units) -> logits. The
    defaults hold 814,931 parameters with the main vocabulary (the main transformer: 802,323)."""

    d_vocab: int = len(VOCAB)
    d_model: int = 224
    n_layers: int = 2
    vocab: tuple[str, ...] = field(default_factory=lambda: tuple(VOCAB))
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "lstm", **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "LSTMConfig":
        return _config_from_json(cls, obj)


class ArithmeticLSTM(nn.Module):
    """forward(tokens (batch, pos)) -> logits (batch, pos, d_vocab); causal by construction."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layers, batch_first=True)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))  # (batch, pos, d_model)
        return self.unembed(hidden)

    @torch.no_grad()
    def states_at_equals(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each stage writes at `=` (EQUALS_POS), for probing, each (batch, d_model): "embed"
        and "lstm <k>" (layer k's hidden state). The layers are run one at a time with the stacked
        LSTM's own weights (`nn.LSTM` offers no per-layer output)."""
        x = self.embed(tokens)
        out = {"embed": x[:, EQUALS_POS]}
        weights = self.lstm.state_dict()
        for k in range(self.cfg.n_layers):
            layer = nn.LSTM(self.cfg.d_model, self.cfg.d_model, batch_first=True, device="meta")
            layer.load_state_dict({name.replace(f"_l{k}", "_l0"): w for name, w in weights.items() if name.endswith(f"_l{k}")},
                                  assign=True)
            x, _ = layer(x)
            out[f"lstm {k}"] = x[:, EQUALS_POS]
        return out


@dataclass(frozen=True)
class EncDecConfig:
    """A pre-LayerNorm encoder-decoder transformer (see the module docstring). `n_prompt` positions
    (0..EQUALS_POS) go to the encoder, at most `n_answer` (from `=` on) to the decoder. The defaults
    (2 + 2 layers, d_model 128, 8 heads, d_mlp 384) hold 802,835 parameters with the main vocabulary."""

    d_vocab: int = len(VOCAB)
    d_model: int = 128
    n_heads: int = 8
    d_mlp: int = 384
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    n_prompt: int = EQUALS_POS + 1
    n_answer: int = N_ANSWER_TOKENS
    vocab: tuple[str, ...] = field(default_factory=lambda: tuple(VOCAB))
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "encdec", **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "EncDecConfig":
        return _config_from_json(cls, obj)


class ArithmeticEncDec(nn.Module):
    """forward(tokens (batch, pos)) -> logits (batch, pos, d_vocab) for n_prompt <= pos < n_prompt + n_answer:
    0 before `=` (position n_prompt - 1), the decoder's next-token logits from `=` on."""

    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)  # shared: prompt and answer are the same characters
        self.pos_encoder = nn.Embedding(cfg.n_prompt, cfg.d_model)
        self.pos_decoder = nn.Embedding(cfg.n_answer, cfg.d_model)
        layer = {"d_model": cfg.d_model, "nhead": cfg.n_heads, "dim_feedforward": cfg.d_mlp, "dropout": 0.0,
                 "activation": "gelu", "batch_first": True, "norm_first": True}
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), cfg.n_encoder_layers,
                                             norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), cfg.n_decoder_layers,
                                             norm=nn.LayerNorm(cfg.d_model))
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)

    def encode(self, prompt: torch.Tensor) -> torch.Tensor:
        """(batch, n_prompt) -> the encoded prompt (batch, n_prompt, d_model)."""
        return self.encoder(self.embed(prompt) + self.pos_encoder.weight)

    def decode(self, memory: torch.Tensor, answer_in: torch.Tensor) -> torch.Tensor:
        """Encoded prompt, decoder input (batch, k) (`=` and the answer so far) -> logits (batch, k, d_vocab)."""
        k = answer_in.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(k, device=answer_in.device)
        x = self.embed(answer_in) + self.pos_decoder.weight[:k]
        return self.unembed(self.decoder(x, memory, tgt_mask=mask, tgt_is_causal=True))

    @torch.no_grad()
    def states_at_equals(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each stage writes at `=`, for probing, each (batch, d_model): "encoder embed",
        "encoder <k>" (layer k's output at `=`, position n_prompt - 1), "decoder embed" and "decoder <k>"
        (at the decoder's first position, which reads `=`); before the stacks' final LayerNorms."""
        n_prompt = self.cfg.n_prompt
        x = self.embed(tokens[:, :n_prompt]) + self.pos_encoder.weight
        out = {"encoder embed": x[:, -1]}
        for k, layer in enumerate(self.encoder.layers):
            x = layer(x)
            out[f"encoder {k}"] = x[:, -1]
        memory = self.encoder.norm(x)
        y = self.embed(tokens[:, n_prompt - 1:n_prompt]) + self.pos_decoder.weight[:1]
        out["decoder embed"] = y[:, 0]
        for k, layer in enumerate(self.decoder.layers):
            y = layer(y, memory)
            out[f"decoder {k}"] = y[:, 0]
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n_prompt, pos = self.cfg.n_prompt, tokens.shape[1]
        if not n_prompt <= pos < n_prompt + self.cfg.n_answer:
            raise ValueError(f"the encoder-decoder reads {n_prompt} to {n_prompt + self.cfg.n_answer - 1} positions "
                             f"(a whole prompt, up to '=', then answer tokens), got {pos}")
        decoded = self.decode(self.encode(tokens[:, :n_prompt]), tokens[:, n_prompt - 1:])
        before = decoded.new_zeros(tokens.shape[0], n_prompt - 1, self.cfg.d_vocab)
        return torch.cat([before, decoded], dim=1)


def build_lstm(cfg: LSTMConfig, device: torch.device | str | None = None) -> ArithmeticLSTM:
    """A freshly initialised ArithmeticLSTM (deterministic given `cfg.seed`)."""
    check_vocab(cfg)
    return build_module(ArithmeticLSTM, cfg, device)


def build_encdec(cfg: EncDecConfig, device: torch.device | str | None = None) -> ArithmeticEncDec:
    """A freshly initialised ArithmeticEncDec (deterministic given `cfg.seed`)."""
    check_vocab(cfg)
    return build_module(ArithmeticEncDec, cfg, device)


register_model_kind("lstm", LSTMConfig, build_lstm)
register_model_kind("encdec", EncDecConfig, build_encdec)
