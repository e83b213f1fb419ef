"""Tests for lama.mlm: the masking proportions, special tokens, padding, determinism and the batch helpers."""

import pytest
import torch
from torch.testing import assert_close

from lama.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from lama.mlm import (MLMCollator, classification_batches, mask_tokens, mlm_batches, pad_batch, predict,
                      sub_vocabulary)
from lama.wordpiece import WordPieceTokenizer

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
V = 1000
SPECIAL = (PAD, UNK, CLS, SEP, MASK)


def _framed(B=400, T=64, seed=0):
    """B sequences ``[CLS] w ... w [SEP] [PAD] ...`` of random lengths; ordinary ids are >= 5."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (B,), generator=g).tolist()
    return [[CLS, *torch.randint(5, V, (n - 2,), generator=g).tolist(), SEP] for n in lengths]


def test_masking_proportions_on_a_large_sample():
    ids, mask = pad_batch(_framed(), PAD)
    out, labels = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(1))
    ordinary = (mask == 1) & (ids != CLS) & (ids != SEP)
    n = int(ordinary.sum())
    assert n > 10_000
    selected = labels != -100
    # selected = ordinary positions with probability 0.15: binomial, sd = sqrt(n p (1-p)) ~ 0.0025 n here
    assert abs(selected.sum() / n - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])  # labels are the original ids
    k = int(selected.sum())
    to_mask = (out == MASK) & selected
    unchanged = (out == ids) & selected
    to_random = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum() / k - 0.8) < 0.03
    assert abs(unchanged.sum() / k - 0.1) < 0.025  # includes the random draws that hit the original (1 in 995)
    assert abs(to_random.sum() / k - 0.1) < 0.025
    assert not ((out != ids) & ~selected).any()  # nothing outside the selection changes
    assert out[to_random].min() >= 5  # random replacements are ordinary tokens, never [MASK]/[PAD]/...


def test_special_tokens_and_padding_are_never_selected():
    ids, mask = pad_batch(_framed(seed=3), PAD)
    ids[:, 5] = torch.where(mask[:, 5] == 1, UNK, PAD)  # an [UNK] in every real row
    for seed in range(5):
        out, labels = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(seed), mlm_prob=0.9)
        special = torch.isin(ids, torch.tensor(SPECIAL))
        assert (labels[special] == -100).all()
        assert torch.equal(out[special], ids[special])
        assert (labels[~special] != -100).float().mean() > 0.85  # the rest is selected at rate 0.9
    # even with every ordinary token selected, padding stays padding
    out, labels = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(0), mlm_prob=1.0)
    assert torch.equal(out[mask == 0], ids[mask == 0]) and (labels[mask == 0] == -100).all()


def test_masking_is_deterministic_given_the_generator_and_does_not_modify_the_input():
    ids, _ = pad_batch(_framed(B=8), PAD)
    before = ids.clone()
    a = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, SPECIAL, MASK, V, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, before)


def test_mask_tokens_validation():
    ids = torch.tensor([[CLS, 7, SEP]])
    g = torch.Generator()
    with pytest.raises(ValueError, match="input_ids must be a \\(B, T\\) long tensor"):
        mask_tokens(ids[0], SPECIAL, MASK, V, g)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        mask_tokens(ids, SPECIAL, MASK, V, 0)
    with pytest.raises(ValueError, match="mlm_prob must be in \\[0, 1\\], got 1.5"):
        mask_tokens(ids, SPECIAL, MASK, V, g, mlm_prob=1.5)
    with pytest.raises(ValueError, match="mask_frac \\+ random_frac must be <= 1"):
        mask_tokens(ids, SPECIAL, MASK, V, g, mask_frac=0.8, random_frac=0.3)
    with pytest.raises(ValueError, match="mask_id=1000 is outside the vocabulary"):
        mask_tokens(ids, SPECIAL, 1000, V, g)


def test_pad_batch_pads_right_and_cuts_keeping_sep():
    ids, mask = pad_batch([[CLS, 7, 8, SEP], [CLS, SEP]], PAD)
    assert ids.tolist() == [[CLS, 7, 8, SEP], [CLS, SEP, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    ids, mask = pad_batch([[CLS, 7, 8, 9, 10, SEP], [CLS, 7, SEP]], PAD, max_length=4)
    assert ids.tolist() == [[CLS, 7, 8, SEP], [CLS, 7, SEP, PAD]]
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        pad_batch([[CLS, SEP]], PAD, max_length=1)
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_batch([], PAD)


def test_collator_adds_pad_and_mask_to_the_special_ids_and_returns_model_inputs():
    coll = MLMCollator(vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=(CLS, SEP))
    assert coll.special_ids == (PAD, CLS, SEP, MASK)
    batch = coll(_framed(B=16, T=12), torch.Generator().manual_seed(0))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    model = BertForMaskedLM(BertConfig(vocab_size=V, n_embd=16, n_layer=1, n_head=2, hidden=32, block_size=12))
    logits, loss = model(**batch)
    assert logits.shape == (*batch["input_ids"].shape, V) and torch.isfinite(loss)
    # predicting only the masked positions gives the same loss, and logits for those rows only
    sparse_logits, sparse_loss = model.eval()(**batch, only_masked=True)
    dense_logits, dense_loss = model(**batch)
    assert sparse_logits.shape == (int((batch["labels"] != -100).sum()), V)
    assert_close(sparse_loss, dense_loss)
    assert_close(sparse_logits, dense_logits[batch["labels"] != -100])
    none = torch.full_like(batch["labels"], -100)
    empty_logits, zero = model(batch["input_ids"], labels=none, only_masked=True)
    assert empty_logits.shape == (0, V) and zero.item() == 0.0  # a batch without targets: no NaN
    with pytest.raises(ValueError, match="only_masked=True needs labels"):
        model(batch["input_ids"], only_masked=True)


def test_sub_vocabulary_keeps_the_splits_of_the_corpus():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "ab", "abc", "##b", "##c", "##bc", "cab"]
    full = WordPieceTokenizer(vocab)
    corpus = ["abc ab", "a cab"]
    small_vocab = sub_vocabulary(full, [full.tokenize(t) for t in corpus])
    assert small_vocab[:5] == vocab[:5]
    assert set(small_vocab[5:]) == {"abc", "ab", "a", "cab"}
    small = WordPieceTokenizer(small_vocab)
    for text in corpus:
        assert small.tokenize(text) == full.tokenize(text)
    assert full.tokenize("abb") == ["ab", "##b"] and small.tokenize("abb") == ["[UNK]"]  # outside the corpus
    with pytest.raises(ValueError, match="min_count must be a positive int"):
        sub_vocabulary(full, [], min_count=0)


def test_batch_functions_draw_from_the_generator_only():
    seqs = _framed(B=50, T=20)
    coll = MLMCollator(vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=(CLS, SEP))
    for by_length in (False, True):
        gb = mlm_batches({"train": seqs}, coll, by_length=by_length)
        a = gb("train", 8, torch.Generator().manual_seed(3))
        b = gb("train", 8, torch.Generator().manual_seed(3))
        assert all(torch.equal(a[k], b[k]) for k in a)
    # by length: a batch is a run of neighbours in length order, so little padding
    gb = mlm_batches({"train": seqs}, coll, by_length=True)
    batch = gb("train", 8, torch.Generator().manual_seed(0))
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max() - lengths.min()) <= 4
    labels = torch.arange(50) % 2
    cb = classification_batches({"train": (seqs, labels)}, PAD)
    batch = cb("train", 16, torch.Generator().manual_seed(0))
    firsts = batch["input_ids"][:, 1]
    index = {tuple(s): n for n, s in enumerate(seqs)}
    for row, mask, y in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        assert int(y) == index[tuple(row[mask == 1].tolist())] % 2  # each label travels with its sentence
    assert firsts.shape == (16,)
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        cb("dev", 4, torch.Generator())
    with pytest.raises(ValueError, match="2 sequences but 3 labels"):
        classification_batches({"train": (seqs[:2], labels[:3])}, PAD)


def test_predict_does_not_depend_on_batching_or_order():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=V, n_embd=16, n_layer=2, n_head=2, hidden=32,
                                                     block_size=64), n_classes=3, pooling="mean")
    seqs = _framed(B=30, T=40, seed=5)
    model.train()
    a = predict(model, seqs, PAD, batch_size=7)
    assert model.training  # restored
    b = predict(model, seqs, PAD, batch_size=64)
    one = torch.cat([model.eval()(pad_batch([s], PAD)[0])[0] for s in seqs])
    assert a.shape == (30, 3)
    assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert_close(a, one, atol=1e-5, rtol=1e-5)
