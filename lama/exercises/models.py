"""Checks for the exercises of chapters 8-11 on whole models: which inputs a language model's outputs
depend on (chapter 8), WordPiece's greedy longest-match-first split (chapter 9), the masked-language-model
loss over the labelled positions only (chapter 10) and greedy decoding that stops at ``</s>`` (chapter 11).

* ``check_dependencies(fn)``: ``fn(model, T, V) -> (T, T)`` bool, entry ``[i, j]`` True when the logits
  at position ``i`` change if only the input token at position ``j`` changes. The check hands it toy
  models whose dependency pattern is known exactly (causal, a mask leaking one step ahead, no mask, a
  local window, ...). Hints: the matrix transposed, every token from ``j`` on changed instead of one,
  only the last position's logits compared, a position treated as blind to its own token.
* ``check_wordpiece(fn)``: ``fn(word, vocab) -> list[str]``, the pieces of one word, later pieces
  prefixed ``##``, or ``["[UNK]"]`` when some position cannot be matched (``lama.wordpiece`` does the
  same, tests/test_exercises_models.py ties the two). Hints: shortest match first, the ``##`` prefix
  missing or put on the first piece too, a partial split kept with an ``[UNK]`` in it.
* ``check_mlm_loss(logits, labels)``: the mean cross-entropy over the positions whose label is not
  -100, what ``F.cross_entropy(..., ignore_index=-100)`` computes. Hints: averaging over every position,
  a mean per sequence first, no log-softmax, a sum instead of a mean, the ignored labels not masked.
* ``check_greedy_decode(fn)``: ``fn(step, bos, eos, max_len) -> list[int]`` where ``step(prefix)`` gives
  the next-token logits ``(V,)``; the argmax tokens after ``<s>``, up to and including the first ``</s>``,
  at most ``max_len`` of them (``Seq2Seq.greedy_decode`` for one source). Hints: not stopping at ``</s>``,
  ``</s>`` dropped, ``<s>`` returned, one token too many or too few, ``step`` called without ``<s>``.

Leaves out: batched decoding and beam search (their bookkeeping is in ``lama.seq2seq``), WordPiece's
normalisation and punctuation splitting (``lama.wordpiece`` has both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lama.exercises._harness import Wrong, check, close, compare, shape_text

__all__ = ["check_dependencies", "check_wordpiece", "check_mlm_loss", "check_greedy_decode",
           "dependencies", "wordpiece", "greedy_decode", "ToyModel"]

UNK = "[UNK]"


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


# --- chapter 8: which inputs each output depends on ---------------------------------------------

class ToyModel:
    """``ids (B, T) -> logits (B, T, V)`` with a known dependency pattern: position ``i`` mixes the
    embeddings of the positions ``j`` with ``pattern[i, j]`` True, then a nonlinearity and a readout."""

    def __init__(self, pattern: torch.Tensor, V: int, rng: torch.Generator, C: int = 8):
        self.pattern, self.V = pattern, V
        self.emb = torch.randn(V, C, generator=rng, dtype=torch.float64)
        self.mix = torch.rand(pattern.shape, generator=rng, dtype=torch.float64) * pattern + pattern * 0.5  # (T, T)
        self.out = torch.randn(C, V, generator=rng, dtype=torch.float64)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] != self.pattern.shape[0]:
            raise ValueError(f"the model takes ids of shape (B, T) with T={self.pattern.shape[0]}, got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        if ids.is_floating_point() or int(ids.min()) < 0 or int(ids.max()) >= self.V:
            raise ValueError(f"ids must be integer token ids in [0, V) = [0, {self.V})")
        h = torch.einsum("ij,bjc->bic", self.mix, self.emb[ids.long()])  # (B, T, C)
        return torch.tanh(h) @ self.out  # (B, T, V)


def _patterns(T: int, rng) -> list[tuple[str, torch.Tensor]]:
    ones = torch.ones(T, T, dtype=torch.bool)
    w = _int(rng, 1, max(1, T - 2))
    return [("causal", ones.tril()), ("a mask leaking one step ahead", ones.tril(1)), ("no mask", ones),
            (f"a causal window of {w + 1}", ones.tril() & ~ones.tril(-w - 1)),
            ("the mask transposed", ones.triu()), ("each position alone", torch.eye(T, dtype=torch.bool))]


def dependencies(model, T: int, V: int) -> torch.Tensor:
    """``(T, T)`` bool: change the token at ``j`` alone (to the next id) and see which outputs ``i`` move."""
    ids = torch.arange(T)[None] % V  # (1, T)
    base = model(ids)  # (1, T, V)
    dep = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        other = ids.clone()
        other[0, j] = (other[0, j] + 1) % V
        dep[:, j] = (model(other) - base)[0].abs().amax(-1) > 0  # (T,)
    return dep


@check("dependency matrix")
def check_dependencies(learner, rng) -> int:
    """``fn(model, T, V) -> (T, T)`` bool: ``[i, j]`` True when the logits at position ``i`` change as the
    input token at position ``j`` alone changes. ``model(ids)`` maps ``(B, T)`` ids in ``[0, V)`` to logits
    ``(B, T, V)``."""
    n = 0
    for T in (5, 8, 12):
        for name, pattern in _patterns(T, rng):
            V = _int(rng, 5, 30)
            model = ToyModel(pattern, V, rng)
            case = f"a model with {name}, T={T}, V={V}"
            got = learner(model, T, V, case=case)
            if isinstance(got, torch.Tensor) and got.dtype != torch.bool and not got.is_floating_point():
                got = got.bool()
            ahead = torch.stack([pattern[:, j:].any(1) for j in range(T)], 1)  # changing tokens j, j+1, ...
            compare(got, pattern, name=learner.name, names="T T", case=case, what="the dependency matrix", mistakes=[
                ("the matrix is transposed: row i is the output position, column j the input position that is "
                 "changed (dep[i, j] = output i depends on input j).",
                 lambda g: not torch.equal(pattern, pattern.T) and torch.equal(g, pattern.T)),
                ("change one token at a time: only ids[:, j] differs between the two inputs, not every token "
                 "from j on.", lambda g: not torch.equal(ahead, pattern) and torch.equal(g, ahead)),
                ("compare the logits at every position i, not only the last one: dep[i, j] asks whether output "
                 "i moved.", lambda g: g.shape == pattern.shape and bool(g[:-1].eq(g[-1]).all())
                 and not pattern[:-1].eq(pattern[-1]).all()),
                ("the diagonal is missing: the logits at position i are computed from token i itself, so "
                 "changing it changes them.", lambda g: torch.equal(g, pattern & ~torch.eye(T, dtype=torch.bool))),
            ])
            n += 1
    return n


# --- chapter 9: WordPiece -----------------------------------------------------------------------

def wordpiece(word: str, vocab) -> list[str]:
    """Greedy longest-match-first: at each position the longest vocabulary piece (``##``-prefixed after
    the first); the whole word is ``["[UNK]"]`` if some position matches nothing."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [UNK]
        pieces.append(piece)
        start = end
    return pieces


def _shortest(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [UNK]
        pieces.append(piece)
        start = end
    return pieces


def _wp_cases(rng):
    fixed = ({"un", "##aff", "##able", "una", "##ffa", "##ble", "u", "##n", "##a", "##f", "##b", "##l", "##e"},
             ["unaffable", "una", "unable", "affable", "u", "unn", "unaffablex"])
    yield fixed
    letters = "abcde"
    for _ in range(11):
        vocab = set()
        for _ in range(_int(rng, 8, 25)):
            k = _int(rng, 1, 4)
            s = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (k,), generator=rng))
            vocab.add(s if _int(rng, 0, 1) else "##" + s)
        vocab |= {letters[int(i)] for i in torch.randint(0, 5, (3,), generator=rng)}
        vocab |= {"##" + letters[int(i)] for i in torch.randint(0, 5, (4,), generator=rng)}
        words = ["".join(letters[int(i)] for i in torch.randint(0, 5, (_int(rng, 1, 9),), generator=rng))
                 for _ in range(12)]
        yield vocab, words


@check("WordPiece")
def check_wordpiece(learner, rng) -> int:
    """``fn(word, vocab) -> list[str]``: ``vocab`` is a set of strings, continuation pieces start with
    ``##``; the longest match first at every position, ``["[UNK]"]`` for a word that cannot be covered."""
    n = 0
    for vocab, words in _wp_cases(rng):
        for word in words:
            show = sorted(vocab) if len(vocab) <= 14 else f"{len(vocab)} pieces incl. {sorted(vocab)[:10]}..."
            case = f"word={word!r}, vocab={show}"
            got = learner(word, frozenset(vocab), case=case)
            want = wordpiece(word, vocab)
            if isinstance(got, tuple):
                got = list(got)
            if not isinstance(got, list) or not all(isinstance(p, str) for p in got):
                raise Wrong(f"{learner.name} should return a list of strings, got {type(got).__name__}.\n"
                            f"  case: {case}")
            n += 1
            if got == want:
                continue
            plain = [p[2:] if p.startswith("##") else p for p in want]
            if got == _shortest(word, vocab):
                hint = ("the shortest match was taken: WordPiece is greedy *longest*-match-first, so start from the "
                        "whole remaining word and shrink it from the right until the piece is in the vocabulary.")
            elif want != [UNK] and got == plain:
                hint = "the pieces after the first must carry the prefix '##' (that is how the vocabulary stores them)."
            elif want != [UNK] and got == ["##" + p for p in plain]:
                hint = "only the pieces after the first carry '##': the first piece of a word is looked up as it is."
            elif want == [UNK] and UNK in got:
                hint = ("when a position matches nothing, the whole word becomes a single '[UNK]': the pieces found "
                        "before it are dropped.")
            else:
                hint = ""
            raise Wrong(f"{hint + chr(10) + '  ' if hint else ''}expected {want}, got {got}.\n  case: {case}")
    return n


# --- chapter 10: the MLM loss -------------------------------------------------------------------

@check("MLM loss")
def check_mlm_loss(learner, rng) -> int:
    """``fn(logits, labels) -> scalar``: logits ``(B, T, V)``, labels ``(B, T)`` holding a token id at the
    prediction targets and -100 elsewhere; the mean over the targets of ``-log softmax(logits)[label]``."""
    n = 0
    for trial in range(10):
        B, T, V = _int(rng, 1, 5), _int(rng, 3, 12), _int(rng, 4, 40)
        logits = torch.randn(B, T, V, generator=rng) * 3
        labels = torch.randint(0, V, (B, T), generator=rng)
        keep = torch.rand(B, T, generator=rng) < (0.15 if trial % 2 else 0.5)
        keep[0, _int(rng, 0, T - 1)] = True  # at least one target
        labels = labels.masked_fill(~keep, -100)
        case = (f"logits {shape_text(logits.shape, 'B T V')}, labels {shape_text(labels.shape, 'B T')} "
                f"with {int(keep.sum())} targets")
        got = learner(logits, labels, case=case)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.reshape(())
        elif isinstance(got, (float, int)):
            got = torch.tensor(float(got))
        want = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        nll = -logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (B, T)
        k = keep.float()
        per_seq = [(nll[b] * k[b]).sum() / k[b].sum() for b in range(B) if k[b].sum() > 0]
        raw = -logits.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        compare(got, want, name=learner.name, case=case, what="the loss", mistakes=[
            ("the loss is averaged over every position: divide by the number of targets (labels != -100), not "
             "by B·T, or the loss shrinks as fewer tokens are masked.", lambda g: close(g, (nll * k).sum() / (B * T))),
            ("the loss is a mean per sequence, then over sequences: average over all targets of the batch at "
             "once, so that every target weighs the same.",
             lambda g: B > 1 and close(g, torch.stack(per_seq).mean())),
            ("take the log-softmax of the logits first: the loss is -log p(label), with p = softmax over V.",
             lambda g: close(g, (raw * k).sum() / k.sum())),
            ("that is the sum over targets: the loss is their mean.", lambda g: close(g, (nll * k).sum())),
        ])
        n += 1
    return n


# --- chapter 11: greedy decoding ----------------------------------------------------------------

def greedy_decode(step, bos: int, eos: int, max_len: int) -> list[int]:
    """The argmax tokens after ``<s>``, up to and including the first ``eos``, at most ``max_len``."""
    out = [bos]
    for _ in range(max_len):
        nxt = int(step(out).argmax())
        out.append(nxt)
        if nxt == eos:
            break
    return out[1:]


class _Step:
    """Next-token logits from the last token and the length so far, from random tables."""

    def __init__(self, V, bos, eos, eos_at, rng):
        self.V, self.bos, self.eos, self.eos_at = V, bos, eos, eos_at
        self.table = torch.randn(V, V, generator=rng)
        self.table[:, eos] = -10.0  # </s> only where the case puts it
        self.table[:, bos] = -10.0  # <s> is never produced
        self.calls = []

    def __call__(self, prefix):
        prefix = [int(t) for t in (prefix.flatten().tolist() if isinstance(prefix, torch.Tensor) else prefix)]
        self.calls.append(prefix)
        if not prefix or prefix[0] != self.bos:
            raise Wrong(f"step was called with {prefix}: the decoder's input always starts with <s> = {self.bos}.")
        logits = self.table[prefix[-1]].clone()
        if len(prefix) == self.eos_at:
            logits[self.eos] = 10.0
        return logits


@check("greedy decoding")
def check_greedy_decode(learner, rng) -> int:
    """``fn(step, bos, eos, max_len) -> list[int]``: ``step(prefix)`` (a list starting with ``bos``) gives the
    next token's logits ``(V,)``; append the argmax until it is ``eos`` (kept) or ``max_len`` tokens are out."""
    n = 0
    for trial in range(12):
        V, max_len = _int(rng, 6, 20), _int(rng, 3, 10)
        bos, eos = 1, 2
        eos_at = _int(rng, 1, max_len) if trial % 3 else max_len + 3  # a third never reach </s>
        when = f"</s> is the argmax as token {eos_at}" if eos_at <= max_len else "</s> never comes"
        case = f"V={V}, bos={bos}, eos={eos}, max_len={max_len}, {when}"
        want = greedy_decode(_Step(V, bos, eos, eos_at, torch.Generator().manual_seed(trial)), bos, eos, max_len)
        step = _Step(V, bos, eos, eos_at, torch.Generator().manual_seed(trial))
        try:
            got = learner(step, bos, eos, max_len, case=case)
        except Wrong as e:
            if "step was called with" in str(e) and "raised Wrong" in str(e):
                raise Wrong(f"step must be called with the whole prefix, a list that starts with <s> = {bos} "
                            f"(then the tokens chosen so far).\n  case: {case}") from None
            raise
        if isinstance(got, torch.Tensor):
            got = got.flatten().tolist()
        if not isinstance(got, (list, tuple)):
            raise Wrong(f"{learner.name} should return a list of token ids, got {type(got).__name__}.\n  case: {case}")
        got = [int(t) for t in got]
        n += 1
        if got == want:
            continue
        if eos in want and len(got) > len(want) and got[:len(want)] == want:
            hint = "decoding must stop at the first </s>: nothing comes after it."
        elif got == want[:-1] and want[-1:] == [eos]:
            hint = "keep the </s> at the end of the output (it says the model chose to stop)."
        elif got[:1] == [bos] and got[1:] == want:
            hint = "<s> is the decoder's first input, not an output: return the tokens after it."
        elif got[:len(want)] == want or want[:len(got)] == got:
            hint = f"at most max_len = {max_len} tokens are generated (one step each), then decoding stops."
        else:
            hint = "the next token is the argmax of step(prefix), the prefix being <s> and all tokens chosen so far."
        raise Wrong(f"{hint}\n  expected {want}, got {got}.\n  case: {case}")
    return n
