"""Tests for lama.viz: accepted layouts, the two plots, the HTML view's markup and data, and the
kernel-side helpers. The view's JavaScript runs in a real browser in tests/test_browser_attention.py."""

import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from lama.bert import Bert, BertConfig  # noqa: E402
from lama.gpt import GPT, GPTConfig  # noqa: E402
from lama.tokenizers import CharTokenizer  # noqa: E402
from lama.viz import (as_layers_heads, attention_view, attention_widget, model_attention, plot_head,  # noqa: E402
                      plot_heads)
from lama.wordpiece import WordPieceTokenizer  # noqa: E402


def _weights(L=2, H=3, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, H, T, T, generator=g).softmax(-1)  # (L, H, T, T)


def _data(view):
    """The weights array the view's script carries."""
    m = re.search(r"A=(\[.*?\]), N=", view.html, re.S)
    return json.loads(m.group(1))


def test_as_layers_heads_accepts_every_layout():
    a = _weights()
    assert as_layers_heads(a).shape == (2, 3, 5, 5)
    assert as_layers_heads(a[0]).shape == (1, 3, 5, 5)
    assert as_layers_heads(a[0, 0]).shape == (1, 1, 5, 5)
    assert_close(as_layers_heads(a[:, None]), a)  # (L, B=1, H, T, T)
    assert_close(as_layers_heads([a[0][None], a[1][None]]), a)  # return_attn's list of (1, H, T, T)
    assert_close(as_layers_heads([a[0], a[1]]), a)
    with pytest.raises(ValueError, match="B=2 sentences"):
        as_layers_heads(torch.stack([a, a], 1))
    with pytest.raises(ValueError, match="empty list"):
        as_layers_heads([])
    with pytest.raises(TypeError, match="tensor or a list"):
        as_layers_heads("attn")


def test_plot_head_labels_queries_and_keys():
    tokens = ["the", "cat", " ", "sat", "\n"]
    ax = plot_head(_weights()[1, 2], tokens, title="L1 H2")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["the", "cat", "␣", "sat", "\\n"]
    assert ax.get_title() == "L1 H2"
    assert_close(torch.tensor(ax.images[0].get_array()), _weights()[1, 2])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="one head"):
        plot_head(_weights(), tokens)
    with pytest.raises(ValueError, match="one entry per key position T=5"):
        plot_head(_weights()[0, 0], tokens[:3])


def test_plot_heads_grid_is_layers_by_heads():
    scores = torch.arange(6.0).reshape(2, 3) / 10
    fig = plot_heads(_weights(), ["a", "b", "c", "d", "e"], scores=scores)
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes][:4] == ["L0 H0 0.00", "L0 H1 0.10", "L0 H2 0.20", "L1 H0 0.30"]
    assert_close(torch.tensor(axes[5].images[0].get_array()), _weights()[1, 2])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"scores must be \(L, H\)"):
        plot_heads(_weights(), scores=torch.zeros(3, 2))


def test_attention_view_carries_rounded_weights_and_escaped_tokens():
    a = _weights()
    tokens = ["<b>", "&", "cat", " ", "</script>"]
    view = attention_view(tokens, a, title="two layers")
    assert_close(torch.tensor(_data(view), dtype=torch.float) / 100, a, atol=0.005, rtol=0)
    assert "<b>" not in view.html.split("<script>")[0].replace("<b>two layers</b>", "")  # escaped in the markup
    assert "&lt;b&gt;" in view.html and "&amp;" in view.html
    assert view.html.count("</script>") == 1  # a token cannot close the script early
    assert view.html.count('class="lama-tok"') == 5
    assert view.html.count('class="lama-row"') == 3  # one row per head of the layer
    assert view.html.count("<option") == 2 + 3
    assert view._repr_html_() == view.html
    assert repr(view) == "<AttentionView of 5 tokens, 2 layer(s) x 3 head(s)>"


def test_attention_view_is_self_contained_and_ids_are_unique():
    a = _weights()
    v1, v2 = attention_view(list("abcde"), a), attention_view(list("abcde"), a)
    assert v1.id != v2.id  # two views of the same data on one page do not clash
    for v in (v1, v2):
        assert f'id="{v.id}"' in v.html and json.dumps(v.id) in v.html
        assert not re.search(r"(src|href)\s*=|https?:|@import|require\(", v.html)  # nothing fetched
    assert re.sub(r"lama-attn-\d+-", "", v1.html) == re.sub(r"lama-attn-\d+-", "", v2.html)  # stable markup


def test_attention_view_errors():
    with pytest.raises(ValueError, match="self-attention"):
        attention_view(list("abc"), torch.rand(1, 1, 2, 3))
    with pytest.raises(TypeError, match="list of strings"):
        attention_view("abcde", _weights())
    with pytest.raises(ValueError, match=r"query must be a position in \[0, 5\)"):
        attention_view(list("abcde"), _weights(), query=5)


def test_model_attention_with_wordpiece_and_bert(one_thread):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "play", "##ing", "."]
    tok = WordPieceTokenizer(vocab)
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, hidden=32, block_size=16)).eval()
    tokens, attn = model_attention(model, tok, "The cat sat playing.")
    assert tokens == ["[CLS]", "the", "cat", "sat", "play", "##ing", ".", "[SEP]"]
    assert attn.shape == (2, 2, 8, 8)
    with torch.no_grad():
        _, ref = model(torch.tensor([tok.encode("The cat sat playing.")]), return_attn=True)
    assert_close(attn, torch.stack(ref)[:, 0])


def test_model_attention_crops_to_block_size_and_widget_redraws(one_thread):
    tok = CharTokenizer.from_corpus("the cat sat on a mat")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    tokens, attn = model_attention(model, tok, "the cat sat")
    assert "".join(tokens) == "the cat sat"[-8:]  # the last block_size characters
    assert attn.shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="non-empty string"):
        model_attention(model, tok, "")
    box = attention_widget(model, tok, "a cat")
    view = box.show("on a mat")
    assert view.tokens == list("on a mat")
    assert box.show("") is None  # an empty sentence is reported, not raised
