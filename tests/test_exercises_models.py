"""lama.exercises.models (chapters 8-11): each check passes lama's reference and an independent
solution, says "not yet" for a stub, and fails each planted mistake with the hint written for it.
The references are tied to the code the chapters use: WordPieceTokenizer.wordpiece,
F.cross_entropy(ignore_index=-100) and Seq2Seq.greedy_decode."""

import pytest
import torch
import torch.nn.functional as F

from lama import exercises as ex
from lama.exercises import models as m
from lama.seq2seq import Seq2Seq, Seq2SeqConfig
from lama.wordpiece import WordPieceTokenizer

MINE = [ex.check_dependencies, ex.check_wordpiece, ex.check_mlm_loss, ex.check_greedy_decode]


def verdict(check, fn):
    result = check(fn, quiet=True)
    return result.status, result.message


# --- independent solutions ------------------------------------------------------------------

def deps_jacobian(model, T, V, *, transpose=False, suffix=False, last_only=False, no_diag=False):
    """Dependencies by changing each token to every other id in turn (not a single change as in the
    reference); flags plant mistakes."""
    ids = torch.arange(T)[None] % V  # (1, T)
    base = model(ids)
    dep = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        for shift in range(1, V):
            other = ids.clone()
            if suffix:
                other[0, j:] = (other[0, j:] + shift) % V
            else:
                other[0, j] = (other[0, j] + shift) % V
            diff = (model(other) - base).abs().amax(-1)[0] > 1e-9  # (T,)
            dep[:, j] |= diff[-1].expand(T) if last_only else diff
    if no_diag:
        dep &= ~torch.eye(T, dtype=torch.bool)
    return dep.T if transpose else dep


def wordpiece_recursive(word, vocab, *, shortest=False, no_prefix=False, prefix_all=False, keep_partial=False):
    """Longest match over the remaining suffix with next() over candidate ends (independent of the
    loops); flags plant mistakes (no_prefix / prefix_all: the lookups are right, the output is not)."""
    out, rest, first = [], word, True
    while rest:
        ends = range(1, len(rest) + 1) if shortest else range(len(rest), 0, -1)
        hit = next((e for e in ends if (rest[:e] if first else "##" + rest[:e]) in vocab), None)
        if hit is None:
            return out + ["[UNK]"] if keep_partial else ["[UNK]"]
        glue = "" if (first and not prefix_all) or no_prefix else "##"
        out.append(glue + rest[:hit])
        rest, first = rest[hit:], False
    return out


def mlm_loss_loop(logits, labels, *, all_positions=False, per_seq=False, raw=False, total=False):
    """The loss by a loop over the targets with math.log of a softmax by hand; flags plant mistakes."""
    B, T, _ = logits.shape
    terms = [[] for _ in range(B)]
    for b in range(B):
        for t in range(T):
            y = int(labels[b, t])
            if y == -100:
                continue
            z = logits[b, t].double()
            terms[b].append(-z[y] if raw else torch.logsumexp(z, 0) - z[y])
    flat = [x for row in terms for x in row]
    if total:
        return torch.stack(flat).sum()
    if all_positions:
        return torch.stack(flat).sum() / (B * T)
    if per_seq:
        return torch.stack([torch.stack(r).mean() for r in terms if r]).mean()
    return torch.stack(flat).mean()


def greedy_while(step, bos, eos, max_len, *, no_stop=False, drop_eos=False, with_bos=False, extra=0, no_bos=False):
    """Greedy decoding with a while loop over a tensor prefix; flags plant mistakes."""
    seq = torch.tensor([bos])
    while len(seq) - 1 < max_len + extra:
        nxt = step(seq[1:] if no_bos else seq).argmax()
        if nxt == eos and drop_eos and not no_stop:
            break
        seq = torch.cat([seq, nxt[None]])
        if nxt == eos and not no_stop:
            break
    return seq.tolist() if with_bos else seq[1:].tolist()


SOLUTIONS = {
    ex.check_dependencies: deps_jacobian,
    ex.check_wordpiece: wordpiece_recursive,
    ex.check_mlm_loss: mlm_loss_loop,
    ex.check_greedy_decode: greedy_while,
}
REFERENCES = {
    ex.check_dependencies: m.dependencies,
    ex.check_wordpiece: m.wordpiece,
    ex.check_mlm_loss: lambda logits, labels: F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                              ignore_index=-100),
    ex.check_greedy_decode: m.greedy_decode,
}

PLANTED = [
    (ex.check_dependencies, lambda mo, T, V: deps_jacobian(mo, T, V, transpose=True), "transposed"),
    (ex.check_dependencies, lambda mo, T, V: deps_jacobian(mo, T, V, suffix=True), "one token at a time"),
    (ex.check_dependencies, lambda mo, T, V: deps_jacobian(mo, T, V, last_only=True), "not only the last one"),
    (ex.check_dependencies, lambda mo, T, V: deps_jacobian(mo, T, V, no_diag=True), "diagonal is missing"),
    (ex.check_wordpiece, lambda w, v: wordpiece_recursive(w, v, shortest=True), "longest"),
    (ex.check_wordpiece, lambda w, v: wordpiece_recursive(w, v, no_prefix=True), "must carry the prefix"),
    (ex.check_wordpiece, lambda w, v: wordpiece_recursive(w, v, prefix_all=True), "only the pieces after the first"),
    (ex.check_wordpiece, lambda w, v: wordpiece_recursive(w, v, keep_partial=True), "whole word becomes a single"),
    (ex.check_mlm_loss, lambda z, y: mlm_loss_loop(z, y, all_positions=True), "averaged over every position"),
    (ex.check_mlm_loss, lambda z, y: mlm_loss_loop(z, y, per_seq=True), "mean per sequence"),
    (ex.check_mlm_loss, lambda z, y: mlm_loss_loop(z, y, raw=True), "log-softmax"),
    (ex.check_mlm_loss, lambda z, y: mlm_loss_loop(z, y, total=True), "sum over targets"),
    (ex.check_greedy_decode, lambda s, b, e, n: greedy_while(s, b, e, n, no_stop=True), "stop at the first </s>"),
    (ex.check_greedy_decode, lambda s, b, e, n: greedy_while(s, b, e, n, drop_eos=True), "keep the </s>"),
    (ex.check_greedy_decode, lambda s, b, e, n: greedy_while(s, b, e, n, with_bos=True), "not an output"),
    (ex.check_greedy_decode, lambda s, b, e, n: greedy_while(s, b, e, n, extra=1), "at most max_len"),
    (ex.check_greedy_decode, lambda s, b, e, n: greedy_while(s, b, e, n, no_bos=True), "starts with <s>"),
]


def test_registered_in_their_chapters():
    assert ex.CHECKS[8][-1] is ex.check_dependencies and ex.CHECKS[9][-1] is ex.check_wordpiece
    assert ex.CHECKS[10][-1] is ex.check_mlm_loss and ex.CHECKS[11][-1] is ex.check_greedy_decode
    assert {c.__name__ for c in MINE} <= set(ex.__all__)


@pytest.mark.parametrize("check", MINE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("which", ["reference", "solution"])
def test_correct_function_passes(check, which):
    fn = (REFERENCES if which == "reference" else SOLUTIONS)[check]
    status, msg = verdict(check, fn)
    assert status == "passed", msg
    assert msg.startswith("✓") and "agrees with lama on all" in msg


# Stubs and crashes: tests/test_exercises.py covers every registered check.


@pytest.mark.parametrize("check, wrong, hint", PLANTED, ids=[f"{c.__name__}-{h}" for c, _, h in PLANTED])
def test_planted_mistake_gets_its_hint(check, wrong, hint):
    status, msg = verdict(check, wrong)
    assert status == "wrong", msg
    assert hint in msg, msg
    assert "case:" in msg or "when called with" in msg


def test_every_check_has_three_planted_mistakes():
    for c in MINE:
        assert sum(p[0] is c for p in PLANTED) >= 3, c.__name__


def test_toy_models_have_their_patterns():
    """The dependency check's ground truth is right: measured by autograd through the embeddings."""
    g = torch.Generator().manual_seed(1)
    T, V = 7, 11
    for _, pattern in m._patterns(T, g):
        model = m.ToyModel(pattern, V, g)
        ids = torch.randint(0, V, (1, T), generator=g)
        e = model.emb[ids].clone().requires_grad_(True)  # (1, T, C)
        h = torch.tanh(torch.einsum("ij,bjc->bic", model.mix, e)) @ model.out  # (1, T, V)
        jac = torch.stack([torch.autograd.grad(h[0, i].sum(), e, retain_graph=True)[0][0].abs().sum(-1)
                           for i in range(T)])  # (T, T)
        assert torch.equal(jac > 0, pattern)
        assert torch.equal(deps_jacobian(model, T, V), pattern)


def test_dependency_check_on_lama_gpt():
    """The independent solution, run on lama's GPT, finds it causal (the chapter's exercise does the same)."""
    from lama.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        dep = deps_jacobian(lambda ids: gpt(ids)[0], 6, 13)
    assert torch.equal(dep, torch.ones(6, 6, dtype=torch.bool).tril())


def test_wordpiece_reference_is_lamas_tokenizer():
    g = torch.Generator().manual_seed(3)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for vocab, words in m._wp_cases(g):
        tok = WordPieceTokenizer(specials + sorted(vocab))
        for w in words:
            assert m.wordpiece(w, vocab) == tok.wordpiece(w), (w, sorted(vocab))


def test_greedy_reference_is_seq2seq_greedy_decode():
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=12, src_block_size=10, tgt_block_size=12, n_layer=1, n_head=2, n_embd=16)
    model = Seq2Seq(cfg).eval()
    bos, eos = 1, 2
    for seed in range(6):
        src = torch.randint(3, 12, (1, 7), generator=torch.Generator().manual_seed(seed))
        # a bias towards </s> that grows with length, so that some decodes stop early and some do not
        bias = torch.zeros(cfg.vocab_size)
        memory, mask = model.encode(src)

        def step(prefix):
            with torch.no_grad():
                logits = model.decode(torch.tensor([list(prefix)]), memory, mask)[0, -1]
            return logits + bias * len(prefix)
        bias[eos] = 0.4 * (seed % 3)
        want = m.greedy_decode(step, bos, eos, 8)
        with torch.no_grad():
            orig = model.decode
            model.decode = lambda tgt, mem, msk, return_attn=False: orig(tgt, mem, msk) + bias * tgt.shape[1]
            got = model.greedy_decode(src, bos, eos, max_len=8)[0].tolist()
            del model.decode
        assert got[:len(want)] == want and all(t == eos for t in got[len(want):])
