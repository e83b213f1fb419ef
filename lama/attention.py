"""Attention: similarity, softmax, scaled dot-product attention, and the attention modules.

Covers
- chapter 1: the similarity functions a query can use to score keys (dot product, scaled
  dot product, bilinear qᵀWk, additive vᵀtanh(W_q q + W_k k), cosine), a numerically stable
  softmax with temperature, and ``scaled_dot_product_attention`` — the one function every
  later model calls — with boolean and causal masks (and an optional additive bias);
- chapter 4: single-head self-attention in teaching stages (``attention_loop``,
  ``attention_matmul``, the module ``SelfAttention``) and ``CrossAttention``;
- chapter 5: head split/merge, ``MultiHeadAttention`` with multi-query and grouped-query
  variants (``n_kv_head``), RoPE/ALiBi hooks, and the ``KVCache`` used when decoding.
Leaves out: the positional schemes themselves (``lama.positional``), sparse/linear/sliding
window attention, paged caches, and fused kernels (we call PyTorch's).

Shapes: queries ``(..., i, D)``, keys ``(..., j, D)``, values ``(..., j, D_v)``; scores and
weights ``(..., i, j)``; ``...`` is any batch shape, e.g. ``B`` or ``B, H``.
Masks are boolean and follow PyTorch's convention: ``True`` means "may attend".
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from lama.positional import POSITIONAL_SCHEMES, ALiBi, RotaryEmbedding

__all__ = [
    "dot_similarity", "scaled_dot_similarity", "cosine_similarity",
    "BilinearSimilarity", "AdditiveSimilarity",
    "softmax", "causal_mask", "scaled_dot_product_attention",
    "attention_loop", "attention_matmul", "SelfAttention", "CrossAttention",
    "split_heads", "merge_heads", "split_heads_view", "merge_heads_view",
    "KVCache", "MultiHeadAttention",
]


# --- input checks -------------------------------------------------------------------------

def _check_qk(q: torch.Tensor, k: torch.Tensor, *, same_width: bool = True) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., T, D) with at least 2 dims, got shape {tuple(t.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got q: {q.dtype} and k: {k.dtype}")
    if same_width and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head size D, got q: (..., i={q.shape[-2]}, D={q.shape[-1]}) "
            f"and k: (..., j={k.shape[-2]}, D={k.shape[-1]})"
        )


# --- similarity functions -----------------------------------------------------------------

def dot_similarity(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Dot product of every query with every key: ``(..., i, D), (..., j, D) -> (..., i, j)``."""
    _check_qk(q, k)
    return q @ k.transpose(-2, -1)  # (..., i, j)


def scaled_dot_similarity(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Dot product divided by √D, so scores keep unit variance whatever the head size."""
    return dot_similarity(q, k) / math.sqrt(q.shape[-1])


def cosine_similarity(q: torch.Tensor, k: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine of the angle between every query and every key, in [-1, 1]."""
    _check_qk(q, k)
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(eps)
    kn = k / k.norm(dim=-1, keepdim=True).clamp_min(eps)
    return qn @ kn.transpose(-2, -1)  # (..., i, j)


class BilinearSimilarity(nn.Module):
    """General (bilinear, "Luong general") similarity qᵀ W k with a learned ``W`` of shape (D_q, D_k).

    Queries and keys may have different widths. With ``W`` the identity it is the dot product.
    """

    def __init__(self, d_q: int, d_k: int | None = None):
        super().__init__()
        d_k = d_q if d_k is None else d_k
        for name, d in (("d_q", d_q), ("d_k", d_k)):
            if not isinstance(d, int) or d < 1:
                raise ValueError(f"{name} must be a positive int, got {d!r}")
        self.W = nn.Parameter(torch.randn(d_q, d_k) / math.sqrt(d_q))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_qk(q, k, same_width=False)
        if q.shape[-1] != self.W.shape[0] or k.shape[-1] != self.W.shape[1]:
            raise ValueError(
                f"expected q (..., i, {self.W.shape[0]}) and k (..., j, {self.W.shape[1]}), "
                f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
            )
        return (q @ self.W) @ k.transpose(-2, -1)  # (..., i, j)


class AdditiveSimilarity(nn.Module):
    """Additive ("Bahdanau") similarity vᵀ tanh(W_q q + W_k k) with a hidden layer of width ``d_hidden``.

    The score is a small one-hidden-layer network applied to every (query, key) pair; note the
    ``tanh`` sits *inside*, and ``v`` turns the hidden vector into one number.
    """

    def __init__(self, d_q: int, d_k: int | None = None, d_hidden: int = 32):
        super().__init__()
        d_k = d_q if d_k is None else d_k
        self.W_q = nn.Linear(d_q, d_hidden, bias=False)
        self.W_k = nn.Linear(d_k, d_hidden, bias=False)
        self.v = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_qk(q, k, same_width=False)
        hq = self.W_q(q).unsqueeze(-2)  # (..., i, 1, d_hidden)
        hk = self.W_k(k).unsqueeze(-3)  # (..., 1, j, d_hidden)
        return self.v(torch.tanh(hq + hk)).squeeze(-1)  # (..., i, j)


# --- softmax and masks --------------------------------------------------------------------

def softmax(x: torch.Tensor, dim: int = -1, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``x / temperature`` along ``dim``, computed stably (the max is subtracted first).

    Low temperatures sharpen the distribution towards the arg-max, high ones flatten it
    towards uniform. Entries equal to -inf get probability 0; a slice that is all -inf
    gives zeros rather than NaN.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = x / temperature
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf slice: avoid inf - inf
    e = torch.exp(x - m)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def causal_mask(T_q: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """Boolean ``(i, j)`` mask, True where query ``i`` may see key ``j``.

    Aligned to the bottom right: with ``T_k > T_q`` (queries are the last ``T_q`` positions,
    as when decoding with a cache) query ``i`` sees keys ``0 .. i + T_k - T_q``.
    """
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T_q)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
    bias: torch.Tensor | None = None,
):
    """softmax(q kᵀ · scale + mask) v, the weighted average of the values.

    Args:
        q: queries ``(..., i, D)``; k: keys ``(..., j, D)``; v: values ``(..., j, D_v)``.
        mask: optional boolean tensor broadcastable to ``(..., i, j)``; True = may attend.
        is_causal: also hide future keys (see ``causal_mask``; for ``i == j`` this is the
            usual lower-triangular mask and equals PyTorch's ``is_causal``).
        scale: defaults to 1/√D.
        return_weights: also return the attention weights ``(..., i, j)``.
        bias: optional float tensor broadcastable to ``(..., i, j)`` added to the scaled
            scores before masking and the softmax (ALiBi's distance penalty is one).

    Returns ``(..., i, D_v)``, and the weights if asked. A query that may attend to no key
    at all gets weights of zero and an output of zero (never NaN).
    """
    _check_qk(q, k)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype != q.dtype:
        raise TypeError(f"v must have the dtype of q and k ({q.dtype}), got {v.dtype}")
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions j, got k: (..., j={k.shape[-2]}, D) "
            f"and v: {tuple(v.shape)}"
        )
    T_q, T_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., i, j)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor, got {getattr(bias, 'dtype', type(bias).__name__)}")
        try:
            torch.broadcast_shapes(bias.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"bias of shape {tuple(bias.shape)} does not broadcast to the scores' shape (..., i, j) = "
                f"{tuple(scores.shape)}"
            ) from None
        scores = scores + bias.to(scores.dtype)  # (..., i, j)
    allowed = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape (..., i, j) = "
                f"{tuple(scores.shape)}"
            ) from None
        allowed = mask
    if is_causal:
        c = causal_mask(T_q, T_k, device=q.device)  # (i, j)
        allowed = c if allowed is None else allowed & c
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))  # before the softmax: weight exactly 0
    weights = softmax(scores, dim=-1)  # (..., i, j); all-masked rows are zeros
    out = weights @ v  # (..., i, D_v)
    return (out, weights) if return_weights else out


# --- single-head self-attention, in teaching stages (chapter 4) ----------------------------
# Each stage computes the same function; tests tie them to ``SelfAttention`` with assert_close.

def _check_weights(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (B, T, C) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    C = x.shape[-1]
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)):
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[0] != C:
            raise ValueError(f"{name} must be a (C={C}, D) matrix, got {getattr(W, 'shape', type(W).__name__)}")
        if W.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {W.dtype} but x has dtype {x.dtype}")
    if W_q.shape[1] != W_k.shape[1]:
        raise ValueError(f"W_q and W_k must have the same width D, got {W_q.shape[1]} and {W_k.shape[1]}")


def attention_loop(x, W_q, W_k, W_v, causal: bool = False):
    """Stage 1: self-attention with explicit Python loops over batch, queries and keys.

    x ``(B, T, C)``; ``W_q``, ``W_k`` ``(C, D)``, ``W_v`` ``(C, D_v)``. For each query position i:
    score every allowed key j with q_i·k_j/√D, softmax the scores, average the values.
    Returns ``(B, T, D_v)``. Slow on purpose: every number is visible.
    """
    _check_weights(x, W_q, W_k, W_v)
    B, T, C = x.shape
    D = W_q.shape[1]
    out = torch.zeros(B, T, W_v.shape[1], dtype=x.dtype, device=x.device)
    for b in range(B):
        for i in range(T):
            q_i = x[b, i] @ W_q  # (D,)
            keys = range(i + 1) if causal else range(T)  # causal: only j <= i exists
            scores = torch.stack([(q_i @ (x[b, j] @ W_k)) / math.sqrt(D) for j in keys])  # (j,)
            w = torch.exp(scores - scores.max())
            w = w / w.sum()  # softmax over the allowed keys
            for w_j, j in zip(w, keys):
                out[b, i] += w_j * (x[b, j] @ W_v)  # weighted sum of values
    return out


def attention_matmul(x, W_q, W_k, W_v, causal: bool = False, mask: torch.Tensor | None = None):
    """Stage 2: the same computation as three matrix products, a mask and a softmax.

    ``Q = X W_q``, ``K = X W_k``, ``V = X W_v``; ``softmax(Q Kᵀ/√D + M) V`` where ``M`` is −inf
    where attending is forbidden (future keys if ``causal``; False entries of ``mask``).
    """
    _check_weights(x, W_q, W_k, W_v)
    q, k, v = x @ W_q, x @ W_k, x @ W_v  # (B, T, D), (B, T, D), (B, T, D_v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, i, j)
    T = x.shape[1]
    if causal:
        scores = scores.masked_fill(~causal_mask(T, device=x.device), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v  # (B, T, D_v)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4 takes no argument (and means CUDA)
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _check_x(x, n_embd: int, weight: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != n_embd:
        raise ValueError(f"{name} must have shape (B, T, C={n_embd}), got {tuple(x.shape)}")
    if x.dtype != weight.dtype and not _autocast_on(x.device.type):
        raise TypeError(
            f"{name} has dtype {x.dtype} but the module's weights are {weight.dtype}; convert one of them with .to()"
        )


def _check_mask(mask, expected: tuple, what: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        ok = mask.dim() <= len(expected) and torch.broadcast_shapes(mask.shape, expected) == torch.Size(expected)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask must broadcast to {what} = {tuple(expected)}, got shape {tuple(mask.shape)}")
    return mask


class SelfAttention(nn.Module):
    """Stage 3: one attention head as a module — learned ``query``, ``key``, ``value`` projections.

    x ``(B, T, C)`` -> ``(B, T, D)`` with ``D = head_size`` (default C). No output projection:
    that arrives with several heads (``MultiHeadAttention``).
    """

    def __init__(self, n_embd: int, head_size: int | None = None, causal: bool = True, bias: bool = False):
        super().__init__()
        head_size = n_embd if head_size is None else head_size
        self.n_embd, self.head_size, self.causal = n_embd, head_size, causal
        self.query = nn.Linear(n_embd, head_size, bias=bias)
        self.key = nn.Linear(n_embd, head_size, bias=bias)
        self.value = nn.Linear(n_embd, head_size, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attn: bool = False):
        _check_x(x, self.n_embd, self.query.weight)
        B, T, C = x.shape
        if mask is not None:
            _check_mask(mask, (B, T, T), "(B, T, T)")
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, D) each
        return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=self.causal, return_weights=return_attn)


# --- heads: split and merge (chapter 5) ----------------------------------------------------

def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """``(B, T, H·D) -> (B, H, T, D)`` with einops: each head gets its own slice of the channels."""
    return rearrange(x, "b t (h d) -> b h t d", h=n_head)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, D) -> (B, T, H·D)``: the heads' outputs side by side again."""
    return rearrange(x, "b h t d -> b t (h d)")  # (B, T, H*D)


def split_heads_view(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """``split_heads`` with ``view`` and ``transpose`` (what einops does for us)."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, T, H, D) -> (B, H, T, D)


def merge_heads_view(x: torch.Tensor) -> torch.Tensor:
    """``merge_heads`` with ``transpose`` + ``reshape`` (a copy: the transposed tensor is not contiguous)."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H, D) -> (B, T, H*D)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Share each key/value head among ``n_rep`` query heads: ``(B, H_kv, T, D) -> (B, H_kv·n_rep, T, D)``.

    Query head h reads key/value head ``h // n_rep`` (the grouping of Ainslie et al., 2023, and Llama).
    """
    if n_rep == 1:
        return x
    return repeat(x, "b g t d -> b (g r) t d", r=n_rep)  # (B, H, T, D)


# --- the KV cache --------------------------------------------------------------------------

class KVCache:
    """One layer's cache of keys and values for autoregressive decoding.

    ``update(k, v)`` appends the new positions' keys and values ``(B, H_kv, T_new, D)`` along T
    and returns everything cached so far; ``length`` counts the cached positions; ``reset()``
    empties it. Memory: 2 · B · H_kv · T · D numbers per layer (see ``bytes_per_token``).
    ``max_len`` (optional) raises an error instead of growing past it.

    The keys and values live in a buffer with room to spare, written in place: ``max_len``
    positions when it is given (a model knows its block size), otherwise the capacity doubles
    as needed. Appending by ``torch.cat`` instead would copy the whole cache at every step,
    O(T²) copying over a generation. ``k`` and ``v`` are views of the filled part. While
    autograd records (training through a cache), it falls back to ``torch.cat``, since writing
    in place would change tensors that the backward pass still needs.
    """

    def __init__(self, max_len: int | None = None):
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
        self.max_len = max_len
        self._k: torch.Tensor | None = None  # (B, H_kv, capacity, D)
        self._v: torch.Tensor | None = None
        self._len = 0

    @property
    def k(self) -> torch.Tensor | None:
        """Cached keys ``(B, H_kv, T, D)`` (a view of the buffer), or None when empty."""
        return None if self._k is None else self._k[:, :, :self._len]

    @property
    def v(self) -> torch.Tensor | None:
        """Cached values ``(B, H_kv, T, D)`` (a view of the buffer), or None when empty."""
        return None if self._v is None else self._v[:, :, :self._len]

    @property
    def length(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes of the cached positions (the buffer may hold spare room beyond them)."""
        return 0 if self._k is None else self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_token(n_layer: int, n_kv_head: int, head_dim: int, bytes_per_number: int = 2) -> int:
        """Bytes one position costs across all layers: keys and values, 2 · n_layer · H_kv · D numbers."""
        return 2 * n_layer * n_kv_head * head_dim * bytes_per_number

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a (B, H_kv, T_new, D) tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if k.shape != v.shape or k.dtype != v.dtype:
            raise ValueError(f"k and v must have the same shape and dtype, got {tuple(k.shape)} {k.dtype} and {tuple(v.shape)} {v.dtype}")
        T_new, T = k.shape[-2], self._len
        if self.max_len is not None and T + T_new > self.max_len:
            raise ValueError(f"cache holds {T} positions; adding {T_new} exceeds max_len={self.max_len}")
        if self._k is not None and (k.shape[:2] != self._k.shape[:2] or k.shape[-1] != self._k.shape[-1]
                                    or k.dtype != self._k.dtype or k.device != self._k.device):
            raise ValueError(
                f"new keys {tuple(k.shape)} {k.dtype} do not match the cache "
                f"(B, H_kv, T, D) = {tuple(self.k.shape)} {self._k.dtype}"
            )
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # autograd is recording: no in-place writes, append by concatenation
            self._k = k if self._k is None else torch.cat([self.k, k], dim=-2)  # (B, H_kv, T + T_new, D)
            self._v = v if self._v is None else torch.cat([self.v, v], dim=-2)  # (B, H_kv, T + T_new, D)
        else:
            capacity = 0 if self._k is None else self._k.shape[-2]
            if T + T_new > capacity:  # (re)allocate: max_len, or double the room
                capacity = self.max_len or max(2 * capacity, T + T_new, 16)
                B, G, _, D = k.shape
                new_k, new_v = (k.new_empty(B, G, capacity, D) for _ in range(2))  # (B, H_kv, capacity, D)
                if T:
                    new_k[:, :, :T], new_v[:, :, :T] = self.k, self.v
                self._k, self._v = new_k, new_v
            self._k[:, :, T:T + T_new] = k
            self._v[:, :, T:T + T_new] = v
        self._len = T + T_new
        return self.k, self.v

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, shape={shape}, max_len={self.max_len})"


# --- multi-head attention ------------------------------------------------------------------

def _attend(q, k, v, allowed, bias, causal, need_weights, dropout_p, drop: nn.Module):
    """Shared core of the modules: q ``(B, H, i, D)``, k/v ``(B, H, j, D)`` -> out ``(B, H, i, D)`` (+ weights).

    ``allowed``: bool mask broadcastable to (B, H, i, j) or None; ``bias``: float (H, i, j) or None;
    ``causal``: bottom-right causal mask. Without weights requested it calls PyTorch's fused
    ``F.scaled_dot_product_attention``; otherwise lama's own. Rows with no allowed key give zeros.
    """
    T_q, T_k = q.shape[-2], k.shape[-2]
    if not need_weights and bias is None and allowed is None:
        # No explicit mask: PyTorch's kernel needs none, or builds the causal one itself. A single
        # query (decoding with a cache) sits after every key, so causality masks nothing; with
        # T_q == T_k the kernel's top-left causal mask is the bottom-right one.
        if not causal or T_q == 1:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
        if T_q == T_k:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
    if causal:
        c = causal_mask(T_q, T_k, device=q.device)  # (i, j)
        allowed_all = c if allowed is None else allowed & c
    else:
        allowed_all = allowed
    if need_weights:
        out, w = scaled_dot_product_attention(q, k, v, mask=allowed_all, bias=bias, return_weights=True)
        if drop.training and dropout_p > 0:
            out = drop(w) @ v  # (B, H, i, D)
        return out, w
    attn_mask = allowed_all
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if allowed_all is not None:
            attn_mask = attn_mask.masked_fill(~allowed_all, float("-inf"))  # (B?, H, i, j)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    if allowed is not None:  # a fully masked row: zeros, whatever the backend does with it
        out = out.masked_fill(~allowed_all.any(-1, keepdim=True), 0.0)
    return out, None


class MultiHeadAttention(nn.Module):
    """Multi-head (causal) self-attention with GPT-2's parameter names, plus MQA/GQA, RoPE and ALiBi.

    ``n_head`` query heads of size ``D = n_embd / n_head``; ``n_kv_head`` key/value heads
    (None: as many as query heads — MHA; 1: multi-query attention, Shazeer 2019; otherwise
    grouped-query attention, Ainslie et al. 2023, each shared by ``n_head / n_kv_head`` query
    heads). One fused input projection ``c_attn: C -> C + 2·H_kv·D`` laid out ``[q | k | v]``
    (exactly GPT-2's ``c_attn`` when H_kv = H), output projection ``c_proj: C -> C``.

    ``positional``: ``"rope"`` rotates q and k (needs ``block_size``), ``"alibi"`` adds a
    distance bias to the scores; the other schemes act on the embeddings, outside.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, causal: bool = True, positional: str = "none",
                 block_size: int | None = None, rope_base: float = 10000.0):
        super().__init__()
        for name, val in (("n_embd", n_embd), ("n_head", n_head)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if isinstance(n_kv_head, bool) or not isinstance(n_kv_head, int) or n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_kv_head={n_kv_head!r} must be a positive int dividing n_head={n_head}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if positional not in POSITIONAL_SCHEMES:
            raise ValueError(f"positional must be one of {POSITIONAL_SCHEMES}, got {positional!r}")
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.causal, self.positional, self.dropout = causal, positional, dropout
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * n_kv_head * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.rope = self.alibi = None
        if positional == "rope":
            if block_size is None:
                raise ValueError("positional='rope' needs block_size (the longest sequence to rotate)")
            self.rope = RotaryEmbedding(self.head_dim, block_size, base=rope_base)
        elif positional == "alibi":
            self.alibi = ALiBi(n_head)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                return_attn: bool = False):
        """x ``(B, T, C)`` -> y ``(B, T, C)``, or ``(y, attn)`` with attn ``(B, H, T, T_k)``.

        ``mask``: bool, broadcastable to ``(B, H, T, T_k)``, True = may attend (a padding mask is
        ``(B, 1, 1, T_k)``). With ``kv_cache`` the new keys/values are appended first and the
        queries attend to everything cached (T_k = cached + T); the causal mask is aligned to
        the bottom right, so the last query sees every key.
        """
        _check_x(x, self.n_embd, self.c_attn.weight)
        B, T, C = x.shape
        H, G, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([C, G * D, G * D], dim=-1)  # (B, T, C), (B, T, G*D) x2
        q = rearrange(q, "b t (h d) -> b h t d", h=H)  # (B, H, T, D)
        k = rearrange(k, "b t (g d) -> b g t d", g=G)  # (B, G, T, D)
        v = rearrange(v, "b t (g d) -> b g t d", g=G)  # (B, G, T, D)
        offset = 0 if kv_cache is None else kv_cache.length
        if self.rope is not None:
            q, k = self.rope(q, k, offset=offset)  # rotate the new positions only
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, G, T_k, D) each
        T_k = k.shape[-2]
        if mask is not None:
            _check_mask(mask, (B, H, T, T_k), "(B, H, T, T_k)")
        bias = None if self.alibi is None else self.alibi(T, T_k).to(q.dtype)  # (H, T, T_k)
        k, v = _repeat_kv(k, H // G), _repeat_kv(v, H // G)  # (B, H, T_k, D) each
        p = self.dropout if self.training else 0.0
        y, w = _attend(q, k, v, mask, bias, self.causal, return_attn, p, self.attn_dropout)
        y = merge_heads(y)  # (B, T, C)
        y = self.resid_dropout(self.c_proj(y))
        return (y, w) if return_attn else y

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, n_head={self.n_head}, n_kv_head={self.n_kv_head}, "
                f"causal={self.causal}, positional={self.positional!r}")


class CrossAttention(nn.Module):
    """Queries from one sequence x ``(B, T, C)``, keys and values from another, ``context (B, S, C)``.

    The encoder-decoder attention of the original transformer: never causal (the whole
    context is known); ``context_mask (B, S)`` marks real tokens (True) vs padding (False).
    Returns ``(B, T, C)``, or ``(y, attn)`` with attn ``(B, H, T, S)``.
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_embd, self.n_head, self.head_dim, self.dropout = n_embd, n_head, n_embd // n_head, dropout
        self.q_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.kv_proj = nn.Linear(n_embd, 2 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                return_attn: bool = False):
        _check_x(x, self.n_embd, self.q_proj.weight)
        _check_x(context, self.n_embd, self.q_proj.weight, name="context")
        B, T, C = x.shape
        S = context.shape[1]
        if context.shape[0] != B:
            raise ValueError(f"x and context must have the same batch size B, got {B} and {context.shape[0]}")
        mask = None
        if context_mask is not None:
            _check_mask(context_mask, (B, S), "(B, S)")
            if context_mask.shape != (B, S):
                raise ValueError(f"context_mask must have shape (B, S) = {(B, S)}, got {tuple(context_mask.shape)}")
            mask = context_mask[:, None, None, :]  # (B, 1, 1, S)
        q = split_heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k, v = rearrange(self.kv_proj(context), "b s (two h d) -> two b h s d", two=2, h=self.n_head)  # (B, H, S, D) x2
        p = self.dropout if self.training else 0.0
        y, w = _attend(q, k, v, mask, None, False, return_attn, p, self.attn_dropout)
        y = self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, C)
        return (y, w) if return_attn else y
