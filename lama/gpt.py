"""GPT: a decoder-only transformer language model, and text generation with a KV cache.

Covers: ``GPTConfig`` (one field per design choice, each commented) and ``GPT``, a stack of
``lama.layers.Block`` between a token embedding and a language-model head, with GPT-2's
parameter names (``transformer.wte``, ``transformer.wpe``, ``transformer.h.N.*``,
``transformer.ln_f``, ``lm_head``) and the head tied to the token embedding (Press & Wolf,
2017); ``forward(idx, targets) -> (logits, loss)``; ``generate``, which decodes with one
``lama.attention.KVCache`` per layer — greedy, or sampled with temperature, top-k and
nucleus (top-p) filtering — and gives the same tokens as decoding without the cache;
``GPT.from_checkpoint`` to rebuild a model saved by ``lama.train``, and
``GPT.from_pretrained`` for OpenAI's GPT-2 weights (the name mapping lives in ``lama.pretrained``).
Leaves out: beam search,
batched prompts of different lengths (padding), and sliding-window caches: once a sequence
outgrows ``block_size`` the model sees only its last ``block_size`` tokens and the cache is
rebuilt every step, exactly as decoding without a cache would do.

``python -m lama.gpt -p "prompt"`` generates from a checkpoint (see ``lama.cli``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from lama.attention import KVCache
from lama.layers import Block, LayerNorm, RMSNorm, init_weights
from lama.positional import POSITIONAL_SCHEMES, SinusoidalPositionalEncoding

__all__ = ["GPTConfig", "GPT", "sample_next"]


@dataclass
class GPTConfig:
    block_size: int = 256            # longest context the model reads (positions 0 .. block_size-1)
    vocab_size: int = 65             # V, number of token ids (65 = Tiny Shakespeare's characters)
    n_layer: int = 4                 # number of transformer blocks
    n_head: int = 4                  # query heads per attention layer
    n_embd: int = 128                # C, width of the residual stream; D = C / n_head
    dropout: float = 0.0             # on embeddings, attention weights and sub-layer outputs
    bias: bool = True                # biases in Linear layers and LayerNorms (GPT-2: True)
    positional: str = "learned"      # "learned" (GPT-2's wpe) | "sinusoidal" | "rope" | "alibi" | "none"
    n_kv_head: int | None = None     # key/value heads: None = n_head (MHA), 1 = MQA, else GQA
    norm_position: str = "pre"       # "pre" (GPT-2) or "post" (the original transformer)
    norm: str = "layernorm"          # "layernorm" or "rmsnorm"
    activation: str = "gelu"         # "gelu" (tanh form, GPT-2) | "gelu_exact" | "relu" | "swiglu"
    mlp_hidden: int | None = None    # feed-forward width (None: 4C, or about 8C/3 for swiglu)
    tie_weights: bool = True         # lm_head shares its matrix with wte
    causal: bool = True              # False only to show what a broken mask does (chapter 8)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.positional not in POSITIONAL_SCHEMES:
            raise ValueError(f"GPTConfig.positional must be one of {POSITIONAL_SCHEMES}, got {self.positional!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


def _check_sampling(temperature, top_k, top_p) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, do_sample: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from last-position logits ``(B, V)``; returns ids ``(B, 1)``.

    Greedy (arg-max) when ``do_sample`` is False or ``temperature == 0``. Otherwise the
    logits are divided by the temperature, then ``top_k`` keeps the k largest (k is
    clamped to V), ``top_p`` keeps the smallest set of most likely tokens whose probability
    sums to at least p (Holtzman et al., 2020), and one token is drawn from what is left.
    Drawing happens on the CPU with ``generator``, so a seed gives the same text on any device.
    """
    _check_sampling(temperature, top_k, top_p)
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)  # (B, V)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the strictly more likely tokens
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)  # (B, 1)


class GPT(nn.Module):
    """A GPT language model: tokens -> embeddings (+ positions) -> n_layer blocks -> ln_f -> logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
        ))
        if c.positional == "learned":
            self.transformer["wpe"] = nn.Embedding(c.block_size, c.n_embd)  # GPT-2's name, so weights map
        if c.norm_position == "pre":  # post-norm blocks already end in a norm
            self.transformer["ln_f"] = LayerNorm(c.n_embd, bias=c.bias) if c.norm == "layernorm" else RMSNorm(c.n_embd)
        self.sinusoidal = SinusoidalPositionalEncoding(c.n_embd, c.block_size) if c.positional == "sinusoidal" else None
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one (V, C) matrix, read both ways
        init_weights(self, c.n_layer)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, each tied matrix counted once; by default without the position table
        (as in the scaling-law papers; the token matrix is the head's too, so it stays)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None, last_only: bool = False):
        """idx ``(B, T)`` token ids -> ``(logits, loss)``.

        logits ``(B, T, V)`` (``(B, 1, V)`` with ``last_only``); loss is the mean cross-entropy
        against ``targets (B, T)`` (ids of -1 are ignored), or None without targets.
        ``kv_caches`` (one per layer) makes positions continue after the cached ones.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int):
            raise ValueError(f"idx must be a (B, T) tensor of integer token ids, got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        c = self.config
        offset = 0 if kv_caches is None else kv_caches[0].length
        if offset + T > c.block_size:
            raise ValueError(f"sequence of {offset + T} positions ({offset} cached + {T} new) is longer than "
                             f"block_size={c.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if c.positional == "learned":
            x = x + self.transformer.wpe(torch.arange(offset, offset + T, device=idx.device))  # (T, C) broadcast
        elif c.positional == "sinusoidal":
            x = x + self.sinusoidal(T, offset)  # (T, C) broadcast
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache=None if kv_caches is None else kv_caches[i])  # (B, T, C)
        if "ln_f" in self.transformer:
            x = self.transformer.ln_f(x)
        if last_only and targets is None:
            x = x[:, -1:, :]  # (B, 1, C): generation needs only the next token
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, do_sample: bool = True,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to the prompts ``idx (B, T)``; returns ``(B, T + new)``.

        ``temperature=0`` (or ``do_sample=False``) is greedy decoding. ``top_k`` larger than the
        vocabulary is clamped; ``top_p`` must lie in (0, 1]. A prompt longer than ``block_size``
        is cropped to its last ``block_size`` tokens, with a warning (the returned tensor still
        starts with the whole prompt). With ``use_cache`` each new token costs one position's
        forward pass (keys and values of earlier positions are kept in a ``KVCache`` per
        layer); the tokens are the same as with ``use_cache=False``.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be a (B, T) tensor of token ids, got {getattr(idx, 'shape', type(idx).__name__)}")
        if idx.shape[1] == 0:
            raise ValueError("the prompt is empty: generation needs at least one token to condition on")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        _check_sampling(temperature, top_k, top_p)
        bs = self.config.block_size
        if idx.shape[1] > bs:
            warnings.warn(f"prompt of {idx.shape[1]} tokens is longer than block_size={bs}; the model sees "
                          f"only its last {bs} tokens", stacklevel=2)
        was_training = self.training
        self.eval()
        caches = None
        out = idx
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(out[:, -bs:], last_only=True)
            elif caches is not None and out.shape[1] <= bs:
                logits, _ = self(out[:, -1:], kv_caches=caches, last_only=True)  # one new position
            else:  # first step, or the window slid past block_size: (re)fill the caches
                caches = [KVCache(max_len=bs) for _ in self.transformer.h]
                logits, _ = self(out[:, -bs:], kv_caches=caches, last_only=True)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, do_sample, generator)  # (B, 1)
            out = torch.cat([out, nxt], dim=1)  # (B, T + 1)
            if use_cache and out.shape[1] > bs:
                caches = None  # positions shift from now on: the cache no longer matches
        self.train(was_training)
        return out

    @classmethod
    def from_pretrained(cls, name_or_dir, device=None) -> "GPT":
        """OpenAI's GPT-2: "gpt2" (124M), "gpt2-medium", "gpt2-large", "gpt2-xl", downloaded once from the
        Hugging Face Hub, or a local folder with config.json + model.safetensors (names mapped in lama.pretrained)."""
        from lama.pretrained import load_gpt2

        return load_gpt2(cls, name_or_dir).to(device or "cpu").eval()

    @classmethod
    def from_checkpoint(cls, path, device=None) -> "GPT":
        """Rebuild the model saved in a ``lama.train`` checkpoint folder, weights loaded, in eval mode."""
        from lama.train import CheckpointError, load_checkpoint_config, load_weights

        saved = load_checkpoint_config(path)
        if saved.get("model_class") != cls.__name__ or not saved.get("model"):
            raise CheckpointError(f"checkpoint {path} holds a {saved.get('model_class')!r} without a GPTConfig; "
                                  f"expected a {cls.__name__}")
        try:
            config = GPTConfig.from_dict(saved["model"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} has an invalid model config: {e}") from None
        model = cls(config)
        load_weights(model, path)
        return model.to(device or "cpu").eval()

    def config_dict(self) -> dict:
        return asdict(self.config)


if __name__ == "__main__":  # python -m lama.gpt -p "How can entropy be reversed?"
    import sys

    from lama.cli import main

    sys.exit(main(["generate", *sys.argv[1:]]))
