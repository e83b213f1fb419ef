"""The interactive attention view (lama.viz.attention_view) in real Chromium.

Two checks: a page made of two views (no book needed) shows the weights the view was given,
reacts to hover, click and the menus, and the views do not disturb each other; and the
chapter's built page (notebooks/12_seeing_attention) reacts to a hovered token with no
JavaScript error or failed request. Needs Chromium (see browser_tools.INSTALL_HINT) and, for
the second, the built book (`make book`).
"""

from __future__ import annotations

import torch

from browser_tools import page_path
from lama.viz import attention_view

CHAPTER = "notebooks/12_seeing_attention"


def _shown(view):
    """The weight each token of a view shows now (its data-w), and which token is the query."""
    w = view.locator(".lama-tok").evaluate_all("els => els.map(e => parseFloat(e.getAttribute('data-w')))")
    q = view.locator(".lama-tok").evaluate_all("els => els.findIndex(e => e.classList.contains('lama-q'))")
    return w, q


def test_two_views_on_one_page_react_independently(browser):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 6, 6, generator=g).softmax(-1)  # (L, H, T, T)
    b = torch.randn(1, 2, 6, 6, generator=g).softmax(-1)
    tokens = ["the", "cat", "<sat>", "on", "&", "mat"]
    v1, v2 = attention_view(tokens, a), attention_view(tokens, b, query=0)
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: not r.url.startswith(("about:", "data:")) and errors.append(f"request {r.url}"))
    try:
        page.set_content(f"<!doctype html><html><body>{v1.html}<p>between</p>{v2.html}</body></html>")
        first, second = page.locator(f"#{v1.id}"), page.locator(f"#{v2.id}")
        assert first.locator(".lama-tok").all_inner_texts() == tokens  # escaped text, shown as is

        def expect(view, weights, l, h, q):
            w, shown_q = _shown(view)
            assert shown_q == q
            assert w == [round(float(x), 2) for x in (weights[l, h, q] * 100).round() / 100]

        expect(first, a, 0, 0, 5)  # starts on the last token
        expect(second, b, 0, 0, 0)
        first.locator(".lama-tok").nth(2).hover()
        expect(first, a, 0, 0, 2)
        expect(second, b, 0, 0, 0)  # the other view did not move
        first.locator(".lama-tok").nth(3).click()
        page.mouse.move(0, 0)  # leaving the token falls back to the clicked one
        expect(first, a, 0, 0, 3)
        first.locator("select.lama-attn-layer").select_option("1")
        first.locator("select.lama-attn-head").select_option("2")
        expect(first, a, 1, 2, 3)
        first.locator("tr.lama-row th").nth(1).click()  # a head's name in the table picks it
        expect(first, a, 1, 1, 3)
        assert first.locator("select.lama-attn-head").input_value() == "1"
        cells = first.locator("tr.lama-row").nth(0).locator("td").evaluate_all("els => els.map(e => e.title)")
        assert cells == [f"{t}: {x:.2f}" for t, x in zip(["the", "cat", "<sat>", "on", "&", "mat"],
                                                         ((a[1, 0, 3] * 100).round() / 100).tolist())]
        assert "the largest weight" in first.locator(".lama-attn-status").inner_text()
        assert not errors, errors
    finally:
        page.close()


def test_view_works_when_inserted_the_way_jupyterlab_does(browser):
    """JupyterLab sets an output's innerHTML (where scripts do not run), then re-creates each
    script element, which runs once the output is attached to the page."""
    a = torch.softmax(torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1)), -1)
    view = attention_view(["a", "b", "c", "d"], a)
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.set_content("<!doctype html><html><body></body></html>")
        page.evaluate("""html => {
          const host = document.createElement('div');
          host.innerHTML = html;
          host.querySelectorAll('script').forEach(old => {
            const s = document.createElement('script');
            s.textContent = old.textContent;
            old.replaceWith(s);
          });
          document.body.appendChild(host);
        }""", view.html)
        root = page.locator(f"#{view.id}")
        root.locator(".lama-tok").nth(1).hover()
        w, q = _shown(root)
        assert q == 1 and w == [round(float(x), 2) for x in (a[0, 0, 1] * 100).round() / 100]
        assert not errors, errors
    finally:
        page.close()


def test_chapter_page_reacts_to_hover(open_page, book_html):
    path = page_path(CHAPTER)
    assert (book_html / path).is_file(), f"{path} is not in the built book: rebuild it (make book)"
    bp = open_page(path)
    views = bp.page.locator(".lama-attn")
    assert views.count() >= 2, "the chapter should show several attention views"
    ids = views.evaluate_all("els => els.map(e => e.id)")
    assert len(set(ids)) == len(ids), f"attention views share an id: {ids}"
    view = views.first
    view.scroll_into_view_if_needed()
    before, q0 = _shown(view)
    n = view.locator(".lama-tok").count()
    target = 1 if q0 != 1 else 2
    view.locator(".lama-tok").nth(target).hover()
    after, q1 = _shown(view)
    assert q1 == target and after != before, "hovering a token did not change the highlighted weights"
    assert abs(sum(after) - 1) < 0.01 * n + 1e-6, f"the shown weights of one query should sum to 1, got {sum(after)}"
    bp.assert_clean()
