"""BERT: the bidirectional transformer encoder, its heads, and loading Hugging Face checkpoints.

Covers: ``BertConfig``; ``BertEmbeddings`` (token + token-type + learned absolute positions,
then LayerNorm); ``BertLayer``, a *post-LN* block (``x = LN(x + attention(x))``, then
``x = LN(x + MLP(x))``) built from lama's own ``MultiHeadAttention`` (non-causal) and
``LayerNorm``/``MLP``; ``Bert``, the encoder that returns one vector per token and honours a
padding mask; the heads as separate modules (``BertPooler``, ``BertMLMHead`` tied to the token
embeddings) and two task models (``BertForMaskedLM``, with an option to predict only the masked
positions; ``BertForSequenceClassification``, pooling the ``[CLS]`` vector or the mean of the real tokens);
sentence embeddings by mean pooling (``mean_pool``, ``embed_sentences``); and
``from_pretrained(folder)`` reading a Hugging Face BERT folder (config.json + safetensors)
through the explicit name table in ``lama.pretrained``.
Leaves out: pretraining and fine-tuning loops (the BERT chapter), next-sentence prediction,
relative position variants, and the decoder/cross-attention uses of BERT.

Shapes: ``input_ids``, ``token_type_ids`` and ``attention_mask`` are ``(B, T)``; hidden states
``(B, T, C)``; attention weights ``(B, H, T, T)``; MLM logits ``(B, T, V)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lama.attention import MultiHeadAttention
from lama.layers import ACTIVATIONS, MLP, LayerNorm
from lama.pretrained import (BERT_MLM_TABLE, BERT_POOLER_TABLE, WeightsError, bert_name_table, strip_prefix,
                             find_weights, map_state_dict, read_config, read_state_dict)

__all__ = ["BertConfig", "BertEmbeddings", "BertLayer", "Bert", "BertPooler", "BertMLMHead",
           "BertForMaskedLM", "BertForSequenceClassification", "mean_pool", "embed_sentences"]


@dataclass
class BertConfig:
    vocab_size: int = 30522     # V: WordPiece vocabulary size (bert-base-uncased: 30522)
    n_embd: int = 768           # C: model width (HF: hidden_size)
    n_layer: int = 12           # number of encoder layers (HF: num_hidden_layers)
    n_head: int = 12            # H: attention heads; head size D = C / H (HF: num_attention_heads)
    hidden: int = 3072          # feed-forward width, 4·C in BERT (HF: intermediate_size)
    block_size: int = 512       # longest input = number of learned positions (HF: max_position_embeddings)
    type_vocab_size: int = 2    # token types: sentence A = 0, sentence B = 1
    dropout: float = 0.1        # on the embeddings and each sub-layer's output (HF: hidden_dropout_prob)
    attn_dropout: float = 0.1   # on the attention weights (HF: attention_probs_dropout_prob)
    layer_norm_eps: float = 1e-12  # BERT's LayerNorm epsilon (much smaller than GPT-2's 1e-5)
    activation: str = "gelu"    # feed-forward nonlinearity: "gelu" is the exact erf form BERT uses
    pad_token_id: int = 0       # id of [PAD]; its embedding starts at zero and gets no gradient

    def __post_init__(self):
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "hidden", "block_size", "type_vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")

    # Hugging Face config.json field for each of ours.
    HF_FIELDS = {"vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
                 "n_head": "num_attention_heads", "hidden": "intermediate_size",
                 "block_size": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
                 "dropout": "hidden_dropout_prob", "attn_dropout": "attention_probs_dropout_prob",
                 "layer_norm_eps": "layer_norm_eps", "pad_token_id": "pad_token_id"}

    @classmethod
    def from_hf(cls, hf: dict, where: str = "config.json") -> BertConfig:
        """Read a Hugging Face BERT ``config.json`` (as a dict); refuse variants lama does not model."""
        if hf.get("model_type", "bert") != "bert":
            raise WeightsError(f"{where}: model_type={hf.get('model_type')!r}, expected 'bert'")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise WeightsError(f"{where}: position_embedding_type={hf['position_embedding_type']!r}; only 'absolute' is supported")
        act = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
        if hf.get("hidden_act", "gelu") not in act:
            raise WeightsError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported (expected one of {sorted(act)})")
        kwargs = {ours: hf[theirs] for ours, theirs in cls.HF_FIELDS.items() if hf.get(theirs) is not None}
        return cls(**kwargs, activation=act[hf.get("hidden_act", "gelu")])

    def to_hf(self) -> dict:
        act = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}[self.activation]
        d = asdict(self)
        return {"model_type": "bert", "hidden_act": act, **{theirs: d[ours] for ours, theirs in self.HF_FIELDS.items()}}


class BertEmbeddings(nn.Module):
    """Sum of token, token-type and position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_token_id)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        self.tok_type = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.ln = LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.tok(input_ids) + self.tok_type(token_type_ids) + self.pos(pos)  # (B, T, C)
        return self.drop(self.ln(x))


class BertLayer(nn.Module):
    """One post-LN encoder layer: attention and feed-forward, each followed by Add & LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.n_embd
        self.attn = MultiHeadAttention(C, config.n_head, dropout=config.attn_dropout, causal=False)
        self.attn.resid_dropout = nn.Dropout(config.dropout)  # BERT: hidden dropout after the projection
        self.ln_1 = LayerNorm(C, eps=config.layer_norm_eps)
        self.mlp = MLP(C, config.hidden, activation=config.activation, dropout=config.dropout)
        self.ln_2 = LayerNorm(C, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attn: bool = False):
        a = self.attn(x, mask=mask, return_attn=return_attn)
        a, w = a if return_attn else (a, None)
        x = self.ln_1(x + a)  # post-LN: normalise after adding into the residual stream
        x = self.ln_2(x + self.mlp(x))
        return (x, w) if return_attn else x


def _check_inputs(config: BertConfig, input_ids, token_type_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (B, T) long tensor, got {getattr(input_ids, 'shape', type(input_ids))} "
                         f"{getattr(input_ids, 'dtype', '')}")
    B, T = input_ids.shape
    if T > config.block_size:
        raise ValueError(f"input_ids has T={T} positions but the model has only block_size={config.block_size}")
    if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < config.vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size}), got [{int(input_ids.min())}, {int(input_ids.max())}]")
    for name, t in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name} must have the shape of input_ids (B, T) = {(B, T)}, got {tuple(t.shape)}")
    if token_type_ids is not None and token_type_ids.numel() and int(token_type_ids.max()) >= config.type_vocab_size:
        raise ValueError(f"token_type_ids must be < type_vocab_size={config.type_vocab_size}, got {int(token_type_ids.max())}")


class _Pretrained:
    """``from_pretrained`` for every BERT model here; subclasses list their parts as (prefix, table, required)."""

    def _parts(self):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs):
        """Build the model from a Hugging Face BERT folder (``config.json`` + ``model.safetensors``).

        Parts the file lacks and the model can do without (a task head) keep their fresh
        initialisation and are listed in ``model.newly_initialized``; any tensor the file holds
        that no table accounts for is an error, as is a missing encoder tensor or a wrong shape.
        """
        folder = Path(folder)
        config = BertConfig.from_hf(read_config(folder), where=str(folder / "config.json"))
        model = cls(config, **kwargs)
        path = find_weights(folder)
        source = strip_prefix(read_state_dict(path), ("bert.",))
        expected, state, used = model.state_dict(), {}, set()
        model.newly_initialized = []
        for prefix, table, required in model._parts():
            needed = {s for sources, _ in table.values() for s in sources}
            if not required and not needed <= source.keys():
                model.newly_initialized.append(prefix.rstrip("."))
                continue
            sub = {k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix)}
            state.update({prefix + k: v for k, v in map_state_dict(source, table, sub, str(path)).items()})
            used |= needed
        # Tensors a BERT checkpoint may carry that these models do not use.
        known = ("embeddings.position_ids", "pooler.", "cls.", "classifier.")
        unknown = sorted(n for n in source if n not in used and not n.startswith(known))
        if unknown:
            raise WeightsError(f"{path}: tensor {unknown[0]!r} has no place in lama's BERT ({len(unknown)} unused)")
        missing, unexpected = model.load_state_dict(state, strict=False)
        fresh = tuple(model.newly_initialized)
        left = [k for k in missing if not (fresh and k.startswith(fresh))]
        if unexpected or left:  # cannot happen if the tables are right; say so loudly if they are not
            raise WeightsError(f"{path}: name table out of step with the model: missing {left}, unexpected {unexpected}")
        return model.eval()


def _init(module: nn.Module, pad_token_id: int) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, the [PAD] embedding at zero."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    if isinstance(getattr(module, "embeddings", None), BertEmbeddings):
        with torch.no_grad():
            module.embeddings.tok.weight[pad_token_id].zero_()


class Bert(_Pretrained, nn.Module):
    """The encoder: embeddings and ``n_layer`` post-LN layers; one vector per input token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.n_layer))
        _init(self, config.pad_token_id)

    def _parts(self):
        return [("", bert_name_table(self.config.n_layer), True)]

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_attn: bool = False):
        """Hidden states ``(B, T, C)``; with ``return_attn`` also a list of per-layer weights ``(B, H, T, T)``.

        ``attention_mask`` ``(B, T)``: 1/True for real tokens, 0/False for padding. Padding keys get
        no attention; padded positions still get (meaningless) outputs, which callers mask out.
        """
        _check_inputs(self.config, input_ids, token_type_ids, attention_mask)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        attns = []
        for layer in self.layers:
            if return_attn:
                x, w = layer(x, mask=mask, return_attn=True)
                attns.append(w)
            else:
                x = layer(x, mask=mask)
        return (x, attns) if return_attn else x


class BertPooler(nn.Module):
    """The [CLS] vector through a dense layer and tanh: one ``(B, C)`` summary of the input."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


class BertMLMHead(nn.Module):
    """Masked-language-model head: dense + activation + LayerNorm, then a decoder tied to the token embeddings."""

    def __init__(self, config: BertConfig, tok_embedding: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.n_embd, config.n_embd)
        self.act = ACTIVATIONS[config.activation]
        self.ln = LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.decoder.weight = tok_embedding.weight  # tied: the same tensor reads and writes tokens
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.transform.weight, std=0.02)  # not _init: that would redraw the tied embeddings
        nn.init.zeros_(self.transform.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(self.act(self.transform(x)))) + self.bias  # (B, T, V)


class BertForMaskedLM(_Pretrained, nn.Module):
    """Encoder + MLM head. ``labels`` (B, T) hold the original ids at masked positions and -100 elsewhere."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.mlm = BertMLMHead(config, self.bert.embeddings.tok)

    def _parts(self):
        mlm = dict(BERT_MLM_TABLE, **{"decoder.weight": (("embeddings.word_embeddings.weight",), "copy")})
        return [("bert.", bert_name_table(self.config.n_layer), True), ("mlm.", mlm, False)]

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, only_masked: bool = False):
        """``(logits (B, T, V), loss)``. With ``only_masked`` (needs ``labels``) the head runs only where
        ``labels != -100`` and ``logits`` is ``(N, V)`` for those N positions: the same loss for a
        fraction of the cost, since the vocabulary-sized output layer dominates a small model."""
        x = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        if only_masked:
            if labels is None:
                raise ValueError("only_masked=True needs labels (the positions to predict)")
            keep = labels != -100  # (B, T)
            logits = self.mlm(x[keep])  # (N, V)
            if not keep.any():  # no targets in this batch: a zero loss that still reaches every parameter
                return logits, x.sum() * 0.0 + logits.sum()
            return logits, F.cross_entropy(logits, labels[keep])
        logits = self.mlm(x)  # (B, T, V)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return logits, loss


class BertForSequenceClassification(_Pretrained, nn.Module):
    """Encoder + pooling + dropout + linear classifier over ``n_classes`` (BERT's recipe for GLUE tasks).

    ``pooling="cls"`` (BERT's): the ``[CLS]`` vector through ``BertPooler`` (dense + tanh).
    ``pooling="mean"`` (sentence-transformers'): the mean of the real tokens' vectors (``mean_pool``,
    padding excluded), no pooler layer.
    """

    def __init__(self, config: BertConfig, n_classes: int = 2, pooling: str = "cls"):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.config, self.pooling = config, pooling
        self.bert = Bert(config)
        self.pooler = BertPooler(config) if pooling == "cls" else None
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, n_classes)
        if self.pooler is not None:
            _init(self.pooler, config.pad_token_id)
        _init(self.classifier, config.pad_token_id)

    def _parts(self):
        cls = {f"{p}": ((f"classifier.{p}",), "copy") for p in ("weight", "bias")}
        pooler = [("pooler.", BERT_POOLER_TABLE, False)] if self.pooler is not None else []
        return [("bert.", bert_name_table(self.config.n_layer), True), *pooler, ("classifier.", cls, False)]

    def pool(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per sequence from the hidden states: ``(B, T, C) -> (B, C)``."""
        if self.pooler is not None:
            return self.pooler(x)  # (B, C)
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)  # (B, T)
        return mean_pool(x, attention_mask)  # (B, C)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, return_attn: bool = False):
        """``(logits (B, n_classes), loss)``; with ``return_attn`` also the per-layer weights ``(B, H, T, T)``."""
        out = self.bert(input_ids, token_type_ids, attention_mask, return_attn=return_attn)
        x, attns = out if return_attn else (out, None)
        logits = self.classifier(self.drop(self.pool(x, attention_mask)))  # (B, n_classes)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return (logits, loss, attns) if return_attn else (logits, loss)


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of each sequence's real-token vectors: ``(B, T, C), (B, T) -> (B, C)``."""
    m = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1e-9)


@torch.no_grad()
def embed_sentences(model: Bert, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 256,
                    normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings ``(N, C)``: mean of the token vectors, L2-normalised (as all-MiniLM-L6-v2 is used).

    With ``normalize`` the dot product of two embeddings is their cosine similarity.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str (wrap it in a list)")
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda n: len(texts[n]))  # similar lengths together: less padding
    out = torch.empty(len(texts), model.config.n_embd, device=device)
    for i in range(0, len(texts), batch_size):
        idx = order[i:i + batch_size]
        batch = {k: v.to(device) for k, v in tokenizer.batch([texts[n] for n in idx], max_length=max_length).items()}
        e = mean_pool(model(**batch), batch["attention_mask"])  # (b, C)
        out[idx] = F.normalize(e, dim=-1) if normalize else e
    return out
