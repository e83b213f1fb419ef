"""Seeing attention: heatmaps of one head or of every head, and an interactive view.

Covers: ``plot_head(attn, tokens)`` (one head's ``(T, T)`` weights as a heatmap, queries
down, keys across), ``plot_heads(attn, tokens)`` (a grid of small heatmaps, layers × heads),
``attention_view(tokens, attn)`` (an interactive HTML + JavaScript view: hover or click a
token to see where it attends, pick the layer and head, and see every head of the layer at
once; it is self-contained, with no external scripts, so it works with no kernel in the static
book as well as in JupyterLab and on Colab), ``model_attention(model, tokenizer, text)``
(tokens and weights of one sentence) and ``attention_widget(model, tokenizer)`` (an ipywidgets
text box that redraws the view for whatever sentence a reader types; needs a kernel).
Leaves out: the weights' gradients or attributions, value-weighted views, cross-attention.

``attn`` is accepted as ``(T, T)``, ``(H, T, T)``, ``(L, H, T, T)``, ``(L, 1, H, T, T)`` or a
list of per-layer ``(1, H, T, T)`` / ``(H, T, T)`` tensors (what ``return_attn`` gives).
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json

import torch

__all__ = ["as_layers_heads", "plot_head", "plot_heads", "AttentionView", "attention_view",
           "model_attention", "attention_widget"]


def as_layers_heads(attn) -> torch.Tensor:
    """Any accepted layout of one sentence's weights -> a float tensor ``(L, H, T, T_k)``."""
    if isinstance(attn, (list, tuple)):
        if not attn:
            raise ValueError("attn is an empty list: expected one (1, H, T, T) or (H, T, T) tensor per layer")
        attn = torch.stack([as_layers_heads(a)[0] for a in attn])  # (L, H, T, T_k)
    if not isinstance(attn, torch.Tensor):
        raise TypeError(f"attn must be a tensor or a list of tensors, got {type(attn).__name__}")
    a = attn.detach().float().cpu()
    if a.dim() == 5:
        if a.shape[1] != 1:
            raise ValueError(f"attn (L, B, H, T, T) has B={a.shape[1]} sentences; index one, e.g. attn[:, 0]")
        a = a[:, 0]  # (L, H, T, T_k)
    elif a.dim() == 4 and len(a) == 1:
        pass  # (1, H, T, T_k): one layer, or return_attn's (B=1, H, T, T_k)
    elif a.dim() == 3:
        a = a[None]  # (1, H, T, T_k)
    elif a.dim() == 2:
        a = a[None, None]  # (1, 1, T, T_k)
    elif a.dim() != 4:
        raise ValueError(f"attn must be (T, T), (H, T, T), (L, H, T, T) or (L, 1, H, T, T), got {tuple(a.shape)}")
    return a


def _check_tokens(tokens, T: int) -> list[str]:
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise TypeError("tokens must be a list of strings, one per position")
    if len(tokens) != T:
        raise ValueError(f"tokens must have one entry per key position T={T}, got {len(tokens)}")
    return list(tokens)


def _label(t: str) -> str:
    return t.replace("\n", "\\n").replace(" ", "␣") if t.strip() != t or not t.strip() else t


def plot_head(attn, tokens, ax=None, title: str | None = None, cmap: str = "Blues"):
    """One head's weights as a heatmap: row ``i`` = query token, column ``j`` = key token.

    ``attn`` is ``(T, T)`` (or anything that squeezes to it); returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    a = as_layers_heads(attn)
    if a.shape[:2] != (1, 1):
        raise ValueError(f"plot_head shows one head; got {a.shape[0]} layers x {a.shape[1]} heads (use plot_heads)")
    a = a[0, 0]  # (T, T_k)
    tokens = _check_tokens(tokens, a.shape[-1])
    if ax is None:
        side = min(7.0, 1.6 + 0.32 * len(tokens))
        _, ax = plt.subplots(figsize=(side + 0.8, side))
    im = ax.imshow(a.numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
    labels = [_label(t) for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, rotation=90)
    ax.set_yticks(range(a.shape[0]), labels[-a.shape[0]:])
    ax.set_xlabel("key j (attended to)")
    ax.set_ylabel("query i (attending)")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_heads(attn, tokens=None, scores=None, size: float = 1.1, cmap: str = "Blues"):
    """A grid of every head, one row per layer and one column per head ("L{l} H{h}").

    ``scores``: optional ``(L, H)`` numbers printed in each title (e.g. a pattern score).
    Tokens label the axes only when the grid and the sentence are small. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    a = as_layers_heads(attn)  # (L, H, T, T_k)
    L, H, T, T_k = a.shape
    if tokens is not None:
        tokens = _check_tokens(tokens, T_k)
    if scores is not None and tuple(scores.shape) != (L, H):
        raise ValueError(f"scores must be (L, H) = {(L, H)}, got {tuple(scores.shape)}")
    fig, axes = plt.subplots(L, H, figsize=(size * H + 0.4, size * L + 0.4), squeeze=False)
    label = tokens is not None and L * H <= 16 and T_k <= 16
    for l, h in itertools.product(range(L), range(H)):
        ax = axes[l, h]
        ax.imshow(a[l, h].numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
        name = f"L{l} H{h}" + ("" if scores is None else f" {float(scores[l, h]):.2f}")
        ax.set_title(name, fontsize=8, pad=2)
        if label:
            ax.set_xticks(range(T_k), [_label(t) for t in tokens], rotation=90, fontsize=6)
            ax.set_yticks(range(T), [_label(t) for t in tokens[-T:]], fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


# --- the interactive view -------------------------------------------------------------------

_COUNTER = itertools.count()

_CSS = """
.lama-attn{font:14px/1.4 system-ui,sans-serif;margin:.4em 0;color:#222}
.lama-attn select{font:inherit;margin:0 .6em 0 .2em}
.lama-attn .lama-attn-tokens{margin:.5em 0;line-height:2.1}
.lama-attn .lama-tok{display:inline-block;line-height:1.3;padding:.1em .25em;margin:1px;border-radius:3px;cursor:pointer;
 border:1px solid #ddd;white-space:pre;font-family:ui-monospace,monospace}
.lama-attn .lama-tok.lama-q{border:2px solid #d62728}
.lama-attn table{border-collapse:collapse;font-size:11px}
.lama-attn td{width:1.6em;min-width:1.6em;height:1.1em;border:1px solid #eee;padding:0}
.lama-attn th.lama-key{writing-mode:vertical-rl;font-size:10px;padding:.2em 0;max-height:6em;overflow:hidden;
 font-family:ui-monospace,monospace;vertical-align:bottom;cursor:default}
.lama-attn th{font-weight:normal;text-align:right;padding:0 .4em;white-space:nowrap;cursor:pointer}
.lama-attn tr.lama-sel th{font-weight:bold;color:#d62728}
.lama-attn .lama-attn-status{color:#555;font-size:12px}
"""

# Behaviour only: the tokens and tables are already in the HTML, so without JavaScript the
# reader still sees the sentence. A = [layer][head][query][key], weights in hundredths.
_JS = """
(function(){
var id=%(id)s, A=%(data)s, N=%(names)s;
var s=document.currentScript, root=(s&&s.closest&&s.closest('#'+id))||document.getElementById(id);
if(!root)return;
var toks=root.querySelectorAll('.lama-tok'), rows=root.querySelectorAll('tr.lama-row');
var selL=root.querySelector('.lama-attn-layer'), selH=root.querySelector('.lama-attn-head');
var status=root.querySelector('.lama-attn-status');
var st={l:0,h:0,q:%(q)d,pin:%(q)d};
function col(w){return 'rgba(31,119,180,'+w.toFixed(2)+')';}
function draw(){
  var W=A[st.l][st.h][st.q], best=0;
  for(var j=0;j<toks.length;j++){
    var w=W[j]/100; if(W[j]>W[best])best=j;
    toks[j].style.background=col(w); toks[j].style.color=w>0.6?'#fff':'';
    toks[j].setAttribute('data-w',w.toFixed(2)); toks[j].title='weight '+w.toFixed(2);
    toks[j].classList.toggle('lama-q',j===st.q);
  }
  for(var h=0;h<rows.length;h++){
    var cells=rows[h].querySelectorAll('td'), R=A[st.l][h][st.q];
    rows[h].classList.toggle('lama-sel',h===st.h);
    for(var k=0;k<cells.length;k++){cells[k].style.background=col(R[k]/100);cells[k].title=N[k]+': '+(R[k]/100).toFixed(2);}
  }
  status.textContent='layer '+st.l+', head '+st.h+': from \\u201c'+N[st.q]+'\\u201d the largest weight, '+
    (W[best]/100).toFixed(2)+', is on \\u201c'+N[best]+'\\u201d';
}
toks.forEach(function(t,j){
  t.addEventListener('mouseenter',function(){st.q=j;draw();});
  t.addEventListener('focus',function(){st.q=j;draw();});
  t.addEventListener('click',function(){st.pin=j;st.q=j;draw();});
  t.addEventListener('mouseleave',function(){st.q=st.pin;draw();});
});
rows.forEach(function(r,h){r.querySelector('th').addEventListener('click',function(){st.h=h;selH.value=h;draw();});});
selL.addEventListener('change',function(){st.l=+selL.value;draw();});
selH.addEventListener('change',function(){st.h=+selH.value;draw();});
draw();
})();
"""


class AttentionView:
    """An interactive attention view; displays itself in Jupyter (``_repr_html_``), ``.html`` is the markup."""

    def __init__(self, html_text: str, tokens: list[str], weights: list, view_id: str):
        self.html, self.tokens, self.weights, self.id = html_text, tokens, weights, view_id

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        L, H = len(self.weights), len(self.weights[0])
        return f"<AttentionView of {len(self.tokens)} tokens, {L} layer(s) x {H} head(s)>"


def attention_view(tokens, attn, query: int | None = None, title: str | None = None) -> AttentionView:
    """An interactive view of one sentence's self-attention, for a notebook or the static book.

    ``tokens``: the ``T`` token strings; ``attn``: the weights in any layout ``as_layers_heads``
    takes. Hover (or focus with Tab) a token to see where it attends, click to keep it; the
    menus pick the layer and head; the table below shows the same query for every head of the
    layer (click a head's name to pick it). Weights are stored rounded to 0.01, which keeps
    the page small. ``query`` is the token shown first (default: the last one).
    """
    a = as_layers_heads(attn)  # (L, H, T, T_k)
    L, H, T, T_k = a.shape
    if T != T_k:
        raise ValueError(f"attention_view shows self-attention (T queries = T keys), got T={T}, T_k={T_k}")
    tokens = _check_tokens(tokens, T)
    q = T - 1 if query is None else query
    if not isinstance(q, int) or not 0 <= q < T:
        raise ValueError(f"query must be a position in [0, {T}), got {query!r}")
    weights = (a * 100).round().to(torch.int64).tolist()  # [L][H][T][T] in hundredths
    data = json.dumps(weights, separators=(",", ":"))
    names = [_label(t) for t in tokens]
    digest = hashlib.sha1((data + json.dumps(names)).encode()).hexdigest()[:8]
    view_id = f"lama-attn-{next(_COUNTER)}-{digest}"  # unique on a page, stable in a fresh kernel
    esc = html.escape
    opts = lambda n: "".join(f'<option value="{i}">{i}</option>' for i in range(n))  # noqa: E731
    spans = "".join(f'<span class="lama-tok" tabindex="0">{esc(t)}</span>' for t in names)
    keys = "<tr><th></th>" + "".join(f'<th class="lama-key">{esc(t)}</th>' for t in names) + "</tr>"
    rows = keys + "".join(f'<tr class="lama-row"><th>head {h}</th>{"<td></td>" * T}</tr>' for h in range(H))
    js = _JS % {"id": json.dumps(view_id), "data": data, "names": json.dumps(names).replace("</", "<\\/"), "q": q}
    body = (
        f'<div class="lama-attn" id="{view_id}">'
        f"<style>{_CSS}</style>"
        + (f"<div><b>{esc(title)}</b></div>" if title else "")
        + f'<div>layer<select class="lama-attn-layer">{opts(L)}</select>'
        f'head<select class="lama-attn-head">{opts(H)}</select>'
        f'<span class="lama-attn-status"></span></div>'
        f'<div class="lama-attn-tokens">{spans}</div>'
        f'<details open><summary>every head of this layer, from the same query</summary>'
        f'<div style="overflow-x:auto"><table>{rows}</table></div></details>'
        f"<script>{js}</script></div>"
    )
    return AttentionView(body, tokens, weights, view_id)


# --- with a kernel: any sentence --------------------------------------------------------------

def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    if hasattr(tokenizer, "id_to_token"):  # WordPiece: the pieces themselves, ## and [CLS] included
        return [tokenizer.id_to_token[i] for i in ids]
    if hasattr(tokenizer, "token_str"):  # lama's BPE
        return [tokenizer.token_str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def model_attention(model, tokenizer, text: str):
    """``(tokens, attn (L, H, T, T))`` of ``text`` through ``model`` (one forward pass, eval mode).

    ``tokenizer.encode(text)`` gives the ids (WordPiece adds ``[CLS]``/``[SEP]``); a text longer
    than the model's ``config.block_size`` keeps its last ``block_size`` tokens.
    """
    from lama.circuits import attention_maps

    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    ids = list(tokenizer.encode(text))
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block is not None:
        ids = ids[-block:]
    if not ids:
        raise ValueError(f"text {text!r} encodes to no tokens")
    device = next(model.parameters()).device
    attn = attention_maps(model, torch.tensor([ids], device=device))[:, 0]  # (L, H, T, T)
    return _token_strings(tokenizer, ids), attn.cpu()


def attention_widget(model, tokenizer, text: str = "The cat sat on the mat because it was tired."):
    """A text box and the ``attention_view`` of what is typed in it (press Enter to redraw).

    Needs a running kernel (ipywidgets); the static book shows ``attention_view`` instead.
    Returns the ``ipywidgets.VBox``; ``box.show(text)`` redraws it from code.
    """
    import ipywidgets as widgets
    from IPython.display import display

    box_text = widgets.Text(value=text, description="sentence", continuous_update=False,
                            layout=widgets.Layout(width="90%"))
    out = widgets.Output()

    def show(value: str):
        out.clear_output(wait=True)
        with out:
            try:
                tokens, attn = model_attention(model, tokenizer, value)
            except ValueError as e:
                print(e)
                return None
            view = attention_view(tokens, attn)
            display(view)
            return view

    box_text.observe(lambda change: show(change["new"]), names="value")
    box = widgets.VBox([box_text, out])
    box.show = show
    show(text)
    return box
