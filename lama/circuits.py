"""Reading attention: capturing every head's weights, scoring heads for simple patterns, and
the small attention-only transformer in which induction heads form.

Covers: ``capture_attention(model)``, a context manager that records the weights of every
``MultiHeadAttention`` call during a forward pass (forward hooks that ask each module for its
weights; the model's outputs are unchanged), and ``attention_maps(model, ...)``, one forward
pass returning them stacked as ``(L, B, H, T, T_k)``; scores of one head's pattern
(``pattern_scores``: previous token, next token, first token (BERT's ``[CLS]``), ``[SEP]``,
other pieces of the same word; ``induction_score`` on a repeated sequence, as in Olsson et al.,
2022); the attention-only transformer of Elhage et al. (2021) (``AttnOnlyConfig``,
``AttnOnlyTransformer``) and its training data, random token sequences whose second half
repeats the first (``repeated_tokens``, ``repeat_batches``).
Leaves out: path patching and ablations, the QK/OV circuit algebra of Elhage et al., and
attention to cross-attention (encoder-decoder) modules.

Shapes: one sentence's weights are ``(L, H, T, T)``: layer, head, query ``i``, key ``j``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lama.attention import MultiHeadAttention

__all__ = ["capture_attention", "attention_maps", "word_ids", "pattern_scores", "matching_heads",
           "induction_score", "repeated_tokens", "repeat_batches", "AttnOnlyConfig", "AttnOnlyTransformer"]


# --- getting the weights out ----------------------------------------------------------------

@contextlib.contextmanager
def capture_attention(model: nn.Module):
    """Inside the ``with``, every ``MultiHeadAttention`` of ``model`` appends its weights
    ``(B, H, T, T_k)`` (detached) to the yielded list, in call order (layer 0 first).

    A pre-hook sets the module's ``return_attn=True``; the forward hook keeps the weights and
    hands the caller just the output, as if nothing had been asked (unless the caller asked
    for the weights itself). The output is the module's own computation either way; only the
    kernel differs (lama's softmax instead of PyTorch's fused attention), so it agrees to
    float rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    maps: list[torch.Tensor] = []
    asked: list[bool] = []
    handles = []

    def pre(module, args, kwargs):
        if len(args) > 3:  # forward(x, mask, kv_cache, return_attn) called positionally
            asked.append(bool(args[3]))
            return (*args[:3], True, *args[4:]), kwargs
        asked.append(bool(kwargs.get("return_attn", False)))
        return args, {**kwargs, "return_attn": True}

    def post(module, args, kwargs, out):
        y, w = out
        maps.append(w.detach())
        return out if asked.pop() else y

    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not modules:
        raise ValueError(f"model ({type(model).__name__}) has no lama MultiHeadAttention module to capture")
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        yield maps
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_maps(model: nn.Module, *inputs, **kwargs) -> torch.Tensor:
    """Run ``model(*inputs, **kwargs)`` once in eval mode; return every layer's weights
    stacked as ``(L, B, H, T, T_k)`` (the model's training flag is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model) as maps:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    return torch.stack(maps)  # (L, B, H, T, T_k)


# --- scoring heads --------------------------------------------------------------------------

def word_ids(tokens: list[str]) -> list[int]:
    """The word each WordPiece token belongs to: a ``##`` piece continues the word before it."""
    ids, n = [], -1
    for t in tokens:
        if not (t.startswith("##") and n >= 0):
            n += 1
        ids.append(n)
    return ids


def _check_attn(attn, tokens=None) -> torch.Tensor:
    if not isinstance(attn, torch.Tensor) or attn.dim() < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be a (..., T, T) tensor of self-attention weights, got "
                         f"{tuple(getattr(attn, 'shape', ())) or type(attn).__name__}")
    if tokens is not None and len(tokens) != attn.shape[-1]:
        raise ValueError(f"tokens must have one entry per position T={attn.shape[-1]}, got {len(tokens)}")
    return attn.float()


def pattern_scores(attn: torch.Tensor, tokens: list[str], words: list[int] | None = None) -> dict:
    """How much of each head's attention follows a simple pattern, averaged over the queries.

    ``attn (..., T, T)`` for one sentence (e.g. ``(L, H, T, T)``); returns a dict of
    ``(...)`` tensors in [0, 1]: ``"previous token"`` (weight on ``j = i - 1``, queries
    ``i >= 1``), ``"next token"`` (``j = i + 1``, queries ``i < T - 1``), ``"first token"``
    (``j = 0``: ``[CLS]`` in BERT), ``"[SEP]"`` (total weight on ``[SEP]`` keys, if any), and
    ``"same word"`` (weight on the *other* pieces of the query's word, over queries in words of
    two or more pieces; if there are any). ``words`` gives each token's word (default:
    ``word_ids(tokens)``). A head that spreads its weight evenly scores about ``1/T`` on each.
    """
    attn = _check_attn(attn, tokens)
    T = attn.shape[-1]
    if T < 2:
        raise ValueError(f"pattern scores need at least 2 positions, got T={T}")
    scores = {
        "previous token": attn.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),  # (...)
        "next token": attn.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1),  # (...)
        "first token": attn[..., :, 0].mean(-1),  # (...)
    }
    sep = torch.tensor([t == "[SEP]" for t in tokens])
    if sep.any():
        scores["[SEP]"] = attn[..., :, sep].sum(-1).mean(-1)  # (...)
    w = torch.tensor(word_ids(tokens) if words is None else list(words))
    if len(w) != T:
        raise ValueError(f"words must have one entry per position T={T}, got {len(w)}")
    same = (w[:, None] == w[None, :]) & ~torch.eye(T, dtype=torch.bool)  # (i, j): other pieces of i's word
    rows = same.any(-1)  # queries in a word of 2+ pieces
    if rows.any():
        scores["same word"] = (attn * same).sum(-1)[..., rows].mean(-1)  # (...)
    return scores


def matching_heads(scores: torch.Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """``(layer, head, score)`` of every head whose score in an ``(L, H)`` table exceeds
    ``threshold``, best first."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(f"scores must be an (L, H) tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    found = [(int(l), int(h), float(scores[l, h])) for l, h in (scores > threshold).nonzero()]
    return sorted(found, key=lambda x: -x[2])


def induction_score(attn: torch.Tensor, period: int) -> torch.Tensor:
    """Mean weight, over the queries of the repeat, on the token *after* the previous copy.

    For a sequence whose positions ``period ..`` repeat positions ``0 ..``, an induction head
    at query ``i >= period`` looks back to ``j = i - period + 1``: the token that followed the
    last occurrence of the current token, which is the next token of the repeat (Olsson et al.,
    2022). ``attn (..., T, T)`` -> ``(...)``.
    """
    attn = _check_attn(attn)
    T = attn.shape[-1]
    if isinstance(period, bool) or not isinstance(period, int) or not 1 <= period < T:
        raise ValueError(f"period must be an int in [1, T={T}), got {period!r}")
    stripe = attn.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)  # (..., T - period + 1): query i, key i - period + 1
    return stripe[..., 1:].mean(-1)  # queries i = period .. T-1


# --- the induction-head experiment ----------------------------------------------------------

def repeated_tokens(batch_size: int, period, vocab_size: int, length: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, length)`` ids: ``period`` uniformly random tokens, then the same tokens again and
    again until ``length`` (default ``2·period``: the first half, then a copy of it).

    ``period`` is an int, or a ``(low, high)`` pair to draw each row's period uniformly from
    ``low .. high`` (inclusive): with a fixed period a head could find the earlier copy by
    position alone; with varying periods only the content says where it is.
    """
    lo, hi = (period, period) if isinstance(period, int) else tuple(period)
    length = 2 * hi if length is None else length
    for name, v in (("batch_size", batch_size), ("period", lo), ("period", hi), ("vocab_size", vocab_size),
                    ("length", length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if lo > hi or hi > length:
        raise ValueError(f"period must satisfy low <= high <= length={length}, got {period!r}")
    periods = torch.randint(lo, hi + 1, (batch_size, 1), generator=generator)  # (B, 1)
    fresh = torch.randint(vocab_size, (batch_size, length), generator=generator)  # (B, T)
    return fresh.gather(1, torch.arange(length) % periods)  # (B, T): position t copies t mod period


def repeat_batches(period, vocab_size: int, length: int):
    """Batch function for ``lama.train.Trainer``: x = ``repeated_tokens`` of ``length + 1`` ids
    without the last ``(B, length)``, y = the same shifted by one. Every split draws fresh
    sequences (nothing to memorise: the only way to predict is to copy)."""
    def get_batch(split: str, batch_size: int, generator: torch.Generator):
        seq = repeated_tokens(batch_size, period, vocab_size, length + 1, generator)  # (B, T+1)
        return seq[:, :-1], seq[:, 1:].contiguous()  # (B, T) each

    return get_batch


@dataclass
class AttnOnlyConfig:
    vocab_size: int = 64    # V: token vocabulary
    block_size: int = 64    # longest sequence (learned positions)
    n_layer: int = 2        # attention layers (two are needed for an induction head)
    n_head: int = 4         # H: heads per layer
    n_embd: int = 64        # C: width of the residual stream

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


class AttnOnlyTransformer(nn.Module):
    """Token + position embeddings, ``n_layer`` pre-LN causal attention layers added into the
    residual stream (no MLPs), a final LayerNorm and the unembedding; ``forward`` returns
    ``(logits (B, T, V), loss or None)`` like ``lama.gpt.GPT``."""

    def __init__(self, config: AttnOnlyConfig):
        super().__init__()
        if not isinstance(config, AttnOnlyConfig):
            raise TypeError(f"config must be an AttnOnlyConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.ln = nn.ModuleList(nn.LayerNorm(c.n_embd) for _ in range(c.n_layer))
        self.attn = nn.ModuleList(MultiHeadAttention(c.n_embd, c.n_head, causal=True) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (B, T) long tensor, got {getattr(idx, 'dtype', type(idx).__name__)} "
                             f"{tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of T={T} is longer than block_size={self.config.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for ln, attn in zip(self.ln, self.attn):
            x = x + attn(ln(x))  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss
