"""The lens (the daemon's page at GET /) in real headless Chromium against the real daemon: every
number it shows is checked against what /v1/score answers for the same request."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from conftest import BIN, REPO, Daemon, Lens

# lens.js's scale, written down again: ColorBrewer PuOr's ends around a light grey.
NEGATIVE, MIDDLE, POSITIVE = (179, 88, 6), (247, 247, 247), (84, 39, 136)
XSS = "<img src=x onerror=alert(1)>"


def expected_colour(value: float, bound: float) -> str:
    t = max(-1.0, min(1.0, value / bound))
    end = NEGATIVE if t < 0 else POSITIVE
    s = abs(t)
    r, g, b = (math.floor(m + (e - m) * s + 0.5) for m, e in zip(MIDDLE, end))
    return f"rgb({r}, {g}, {b})"


def expected_bound(values: list[float]) -> float:
    ordered = sorted(abs(v) for v in values)
    bound = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return bound if bound > 0 else (ordered[-1] or 1.0)


def shown(text: str) -> str:
    return text.replace("\n", "↵\n").replace("\t", "→\t")


def fragment(**state) -> str:
    pairs = []
    for key, value in state.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, item))
    return urlencode(pairs, quote_via=quote)


def open_lens(page: Lens, daemon: Daemon, state: str = "") -> None:
    page.goto(f"{daemon.base}/#token={daemon.token}" + (f"&{state}" if state else ""))
    page.wait("document.getElementById('status').textContent.includes('connected')")


def score_with_mouse(page: Lens, candidates: int) -> None:
    page.click("document.getElementById('score')")
    wait_scored(page, candidates)


def wait_scored(page: Lens, candidates: int) -> None:
    page.wait(
        f"document.querySelectorAll('#results .candidate').length === {candidates}"
        " && !document.getElementById('score').disabled"
        " && document.getElementById('busy').textContent.startsWith('Scored')"
    )


READ_RESULTS = """(() => ({
  rankings: [...document.querySelectorAll('table.ranking')].map((t) => ({
    model: t.dataset.model,
    rows: [...t.tBodies[0].rows].map((r) => ({
      index: Number(r.dataset.index), winner: r.classList.contains('winner'),
      rank: r.cells[0].textContent, text: r.cells[1].textContent, score: r.cells[2].title,
    })),
  })),
  bounds: Object.fromEntries([...document.querySelectorAll('.legend')].map((l) => [l.dataset.kind, Number(l.dataset.bound)])),
  candidates: [...document.querySelectorAll('#results .candidate')].map((a) =>
    [...a.querySelectorAll('.strip')].map((s) => ({
      label: s.getAttribute('aria-label'),
      tokens: [...s.querySelectorAll('.tok')].map((t) => ({text: t.textContent, colour: getComputedStyle(t).backgroundColor})),
    }))),
}))()"""

READ_TIP = """(() => {
  const tip = document.getElementById('tip');
  if (tip.hidden) return null;
  return {text: tip.querySelector('.tip-text').textContent,
          rows: Object.fromEntries([...tip.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))};
})()"""


def token_js(candidate: int, strip: int, token: int) -> str:
    return f"document.querySelectorAll('#results .candidate')[{candidate}].querySelectorAll('.strip')[{strip}].querySelectorAll('.tok')[{token}]"


def hover_tip(page: Lens, candidate: int, strip: int, token: int) -> dict:
    x, y = page.center(token_js(candidate, strip, token))
    page.mouse_move(x, y)
    tip = page.eval(READ_TIP)
    assert tip is not None, f"no tooltip on token {token} of candidate {candidate}"
    return tip


def assert_tip_is(tip: dict, token: dict) -> None:
    assert json.loads(tip["text"]) == token["text"]
    rows = tip["rows"]
    assert rows["token id"] == str(token["id"])
    for name in ("logprob", "q", "v_next", "reward"):
        # The page prints the daemon's double in full: it parses back to the very same number.
        assert float(rows[name]) == token[name], (name, rows[name], token[name])


def assert_ranking(shown_ranking: dict, response: dict, candidates: list[str]) -> None:
    rows = shown_ranking["rows"]
    assert [r["index"] for r in rows] == response["order"]
    assert [r["winner"] for r in rows] == [True] + [False] * (len(rows) - 1)
    assert "best" in rows[0]["rank"] and rows[0]["rank"].startswith("1")
    for row in rows:
        result = response["results"][row["index"]]
        assert float(row["score"]) == result["score"]
        assert row["text"] == f"#{row['index'] + 1} {candidates[row['index']]}"


def test_the_page_is_static_public_and_locked_down(daemon: Daemon):
    status, headers, body = daemon.request("GET", "/", token=False)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "form-action 'none'", "base-uri 'none'"):
        assert directive in csp, csp
    assert "unsafe" not in csp
    # docs/SERVER.md quotes the policy the daemon sends.
    assert f"Content-Security-Policy: {csp}\n" in (REPO / "docs" / "SERVER.md").read_text()
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert b'<script type="module" src="/web/app.js">' in body
    status, headers, _ = daemon.request("GET", "/web/app.js", token=False)
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    # The API still needs the token; an unknown file is the API's 404.
    assert daemon.request("GET", "/v1/models", token=False)[0] == 401
    assert daemon.request("GET", "/web/nope.js", token=False)[0] == 404
    # The Unix socket serves the same page.
    status, _, unix_body = daemon.unix_get("/")
    assert (status, unix_body) == (200, body)


def test_without_a_token_the_page_says_how_to_get_one(page: Lens, daemon: Daemon, shoot):
    # The daemon answers the page's first call 401: the browser logs that load, nothing else.
    page.expected_errors = ("status of 401",)
    page.goto(f"{daemon.base}/")
    page.wait("!document.getElementById('auth').hidden")
    text = page.eval("document.getElementById('auth').textContent")
    assert "endorm open" in text and "token file" in text and "endorm config show" in text
    assert page.eval("document.getElementById('score-view').hidden")
    shoot(page, "no-token")
    # A wrong token: refused, and said so.
    page.goto(f"{daemon.base}/#token=wrong-token-0123456789abcdef0123456789")
    page.wait("document.getElementById('status').textContent.includes('refused this token')")
    assert page.eval("sessionStorage.length") == 0
    # Pasting the right one lets the page in.
    page.eval("document.getElementById('token-input').focus()")
    page.type(daemon.token)
    page.key("Enter")
    page.wait("document.getElementById('status').textContent.includes('connected')")
    assert page.eval("document.getElementById('auth').hidden")
    assert page.eval("!document.getElementById('score-view').hidden")


def test_scores_and_shows_each_tokens_reward_as_the_daemon_computed_it(page: Lens, daemon: Daemon, shoot):
    prompt = "What is the capital of France?"
    candidates = ["Paris.", "London, I think.", "The capital of France is Paris.\nIt is on the Seine."]
    open_lens(page, daemon, fragment(prompt=prompt, c=candidates))
    # The token left the address bar for this tab's sessionStorage.
    assert "token" not in page.eval("location.href")
    assert page.eval("sessionStorage.getItem('endorm.token')") == daemon.token
    score_with_mouse(page, len(candidates))
    expected = daemon.score({"model": "alpha", "prompt": prompt, "candidates": candidates, "return_tokens": True, "aggregate": "endo"})
    seen = page.eval(READ_RESULTS)
    assert [t["model"] for t in seen["rankings"]] == ["alpha"]
    assert_ranking(seen["rankings"][0], expected, candidates)

    rewards = [t["reward"] for r in expected["results"] for t in r["tokens"]]
    bound = expected_bound(rewards)
    assert seen["bounds"] == {"reward": bound}
    for i, result in enumerate(expected["results"]):
        (strip,) = seen["candidates"][i]
        assert [t["text"] for t in strip["tokens"]] == [shown(t["text"]) for t in result["tokens"]]
        assert [t["colour"] for t in strip["tokens"]] == [expected_colour(t["reward"], bound) for t in result["tokens"]]
        for k, token in enumerate(result["tokens"]):
            assert_tip_is(hover_tip(page, i, 0, k), token)
    # Both signs and more than two colours: the scale is in use.
    assert min(rewards) < 0 < max(rewards)
    assert len({t["colour"] for c in seen["candidates"] for t in c[0]["tokens"]}) > 5
    hover_tip(page, 0, 0, 0)
    page.eval("window.scrollTo(0, 0)")
    shoot(page, "score", full=True)


def test_two_models_side_by_side_with_the_per_token_difference(page: Lens, daemon: Daemon, shoot):
    prompt = "Name a primary colour."
    candidates = ["Red.", "Blue is one of the three primary colours.", "Green, probably."]
    open_lens(page, daemon, fragment(prompt=prompt, c=candidates, compare="beta"))
    assert page.eval("document.getElementById('compare').value") == "beta"
    score_with_mouse(page, len(candidates))
    request = {"prompt": prompt, "candidates": candidates, "return_tokens": True, "aggregate": "endo"}
    alpha = daemon.score({**request, "model": "alpha"})
    beta = daemon.score({**request, "model": "beta"})
    assert alpha["results"] != beta["results"], "beta's principle should change the rewards"
    seen = page.eval(READ_RESULTS)
    assert [t["model"] for t in seen["rankings"]] == ["alpha", "beta"]
    assert_ranking(seen["rankings"][0], alpha, candidates)
    assert_ranking(seen["rankings"][1], beta, candidates)

    bound = expected_bound([t["reward"] for r in alpha["results"] + beta["results"] for t in r["tokens"]])
    diffs = [[b["reward"] - a["reward"] for a, b in zip(ra["tokens"], rb["tokens"])] for ra, rb in zip(alpha["results"], beta["results"])]
    diff_bound = expected_bound([d for ds in diffs for d in ds])
    assert seen["bounds"] == {"reward": bound, "difference": diff_bound}
    for i, (ra, rb) in enumerate(zip(alpha["results"], beta["results"])):
        strips = seen["candidates"][i]
        assert [s["label"] for s in strips] == ["alpha", "beta", "beta − alpha"]
        assert [t["id"] for t in ra["tokens"]] == [t["id"] for t in rb["tokens"]]
        for s, result in enumerate((ra, rb)):
            assert [t["colour"] for t in strips[s]["tokens"]] == [expected_colour(t["reward"], bound) for t in result["tokens"]]
        assert [t["colour"] for t in strips[2]["tokens"]] == [expected_colour(d, diff_bound) for d in diffs[i]]
        for k, (ta, tb) in enumerate(zip(ra["tokens"], rb["tokens"])):
            assert_tip_is(hover_tip(page, i, 1, k), tb)
            rows = hover_tip(page, i, 2, k)["rows"]
            assert float(rows["reward (alpha)"]) == ta["reward"]
            assert float(rows["reward (beta)"]) == tb["reward"]
            assert float(rows["difference"]) == diffs[i][k]
    page.eval("window.scrollTo(0, 0)")
    shoot(page, "side-by-side", full=True)
    # The picture in README.md and docs/SERVER.md (docs/img/lens.png is a copy): the results, a
    # token's numbers shown (focused, so the tooltip stays while the window grows for the shot).
    page.mouse_move(1, 1)
    page.eval(f"{token_js(1, 2, 3)}.focus()")
    shoot(page, "lens", region=".actions")


def test_chat_messages_and_raw_text(page: Lens, daemon: Daemon):
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is the capital of Italy?"}]
    candidates = ["Rome.", "Milan."]
    open_lens(page, daemon, fragment(messages=json.dumps(messages), c=candidates))
    assert page.eval("document.querySelector('input[name=context]:checked').value") == "messages"
    score_with_mouse(page, len(candidates))
    expected = daemon.score({"model": "alpha", "messages": messages, "candidates": candidates, "return_tokens": True, "aggregate": "endo"})
    seen = page.eval(READ_RESULTS)
    assert_ranking(seen["rankings"][0], expected, candidates)
    assert_tip_is(hover_tip(page, 0, 0, 0), expected["results"][0]["tokens"][0])

    prompt, code = "def add(a, b):\n", ["    return a + b\n", "    return a - b\n"]
    page.goto("about:blank")
    open_lens(page, daemon, fragment(format="raw", prompt=prompt, c=code))
    score_with_mouse(page, len(code))
    expected = daemon.score({"model": "alpha", "format": "raw", "prompt": prompt, "candidates": code, "return_tokens": True, "aggregate": "endo"})
    seen = page.eval(READ_RESULTS)
    assert_ranking(seen["rankings"][0], expected, code)
    for i, result in enumerate(expected["results"]):
        # Raw text: no end-of-turn token, and the newline shown as ↵.
        assert [t["text"] for t in seen["candidates"][i][0]["tokens"]] == [shown(t["text"]) for t in result["tokens"]]
        assert "".join(t["text"] for t in result["tokens"]) == code[i]
        last = len(result["tokens"]) - 1
        assert_tip_is(hover_tip(page, i, 0, last), result["tokens"][last])


def test_a_candidate_that_is_html_stays_text(page: Lens, daemon: Daemon, shoot):
    # Through a shared link, the way such text would reach someone else's browser.
    candidates = [XSS, "<script>alert(2)</script>", '"><svg onload=alert(3)>']
    open_lens(page, daemon, fragment(prompt=f"<b>{XSS}</b>", c=candidates, principle="</textarea><img src=y onerror=alert(4)>"))
    score_with_mouse(page, len(candidates))
    time.sleep(0.5)
    assert page.dialogs() == []
    assert page.eval("document.querySelectorAll('img, svg, b').length") == 0
    assert page.eval("[...document.scripts].map((s) => s.getAttribute('src'))") == ["/web/app.js"]
    seen = page.eval(READ_RESULTS)
    texts = {r["index"]: r["text"] for r in seen["rankings"][0]["rows"]}
    assert texts == {i: f"#{i + 1} {c}" for i, c in enumerate(candidates)}
    for i, candidate in enumerate(candidates):
        joined = "".join(t["text"] for t in seen["candidates"][i][0]["tokens"])
        assert joined.startswith(candidate), joined
    assert page.eval("document.getElementById('principle').value") == "</textarea><img src=y onerror=alert(4)>"
    assert XSS in page.eval("document.body.innerText")
    shoot(page, "html-as-text")


def test_keyboard_alone_scores_and_reads_the_tokens(page: Lens, daemon: Daemon, shoot):
    prompt = "Say hello."
    candidates = ["Hello!", "Goodbye."]
    open_lens(page, daemon, fragment(prompt=prompt, c=candidates))
    for _ in range(60):
        page.key("Tab")
        if page.eval("document.activeElement.id") == "score":
            break
    else:
        raise AssertionError("Tab never reached the Score button")
    page.key("Enter")
    wait_scored(page, len(candidates))
    expected = daemon.score({"model": "alpha", "prompt": prompt, "candidates": candidates, "return_tokens": True, "aggregate": "endo"})
    focused_token = "document.activeElement.classList.contains('tok')"
    for _ in range(10):
        page.key("Tab")
        if page.eval(focused_token):
            break
    else:
        raise AssertionError("Tab never reached a token")
    first = expected["results"][0]["tokens"]
    assert page.eval("document.activeElement") is not None
    assert page.eval("document.activeElement.getAttribute('aria-describedby')") == "tip"
    assert_tip_is(page.eval(READ_TIP), first[0])
    page.key("ArrowRight")
    assert_tip_is(page.eval(READ_TIP), first[1])
    shoot(page, "keyboard")
    # One tab stop per strip: Tab goes on to the next candidate's tokens.
    page.key("Tab")
    assert page.eval(focused_token)
    assert_tip_is(page.eval(READ_TIP), expected["results"][1]["tokens"][0])
    page.key("Escape")
    assert page.eval(READ_TIP) is None


def test_the_link_shares_the_input_and_the_export_is_the_response(page: Lens, browser, daemon: Daemon, tmp_path: Path):
    prompt = "Write a haiku about rain."
    candidates = ["Rain taps the window\nsoft grey morning, quiet street\nthe kettle answers", "Rain.", "rain rain rain"]
    options = {"aggregate": "endo_mean", "alpha": "0.7", "principle": "Answer in verse.", "consensus": "1", "contrast": "neutral"}
    open_lens(page, daemon, fragment(prompt=prompt, c=candidates, **options))
    score_with_mouse(page, len(candidates))
    link = page.eval("location.href")
    assert "token" not in link
    state = parse_qs(link.split("#", 1)[1])
    assert state["prompt"] == [prompt] and state["c"] == candidates
    assert {k: state[k] for k in options} == {k: [v] for k, v in options.items()}
    # The terms the options add are in the table.
    headers = page.eval("[...document.querySelectorAll('table.ranking th')].map((th) => th.textContent)")
    assert "agreement" in headers and "neutral" in headers

    browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path), "browserContextId": page.context, "eventsEnabled": True})
    start = len(browser.events)
    page.click("document.getElementById('export')")
    browser.wait_event(lambda s, m, p: m == "Browser.downloadProgress" and p["state"] == "completed", 30, start)
    exported = json.loads((tmp_path / "endorm-score.json").read_text())
    (run,) = exported["runs"]
    assert run["request"] == {"model": "alpha", "prompt": prompt, "candidates": candidates, "return_tokens": True,
                              "aggregate": "endo_mean", "alpha": 0.7, "principle": "Answer in verse.", "consensus": 1,
                              "contrast": "neutral"}
    again = daemon.score(run["request"])
    assert run["response"]["results"] == again["results"]
    assert run["response"]["order"] == again["order"]

    # The link, opened in another browser context (a token of its own), gives back the same input.
    other = Lens(browser)
    try:
        other.goto(f"{link}&token={daemon.token}")
        other.wait("document.getElementById('status').textContent.includes('connected')")
        restored = other.eval(
            "({prompt: document.getElementById('prompt').value,"
            " candidates: [...document.querySelectorAll('#candidates textarea')].map((t) => t.value),"
            " aggregate: document.getElementById('aggregate').value, alpha: document.getElementById('alpha').value,"
            " principle: document.getElementById('principle').value,"
            " consensus: document.getElementById('consensus').value, contrast: document.getElementById('contrast').checked})"
        )
        assert restored == {"prompt": prompt, "candidates": candidates, "aggregate": "endo_mean", "alpha": "0.7",
                            "principle": "Answer in verse.", "consensus": "1", "contrast": True}
        assert other.errors() == []
    finally:
        other.close()


def test_the_api_reference_is_the_daemons_openapi_document(page: Lens, daemon: Daemon, shoot):
    status, _, body = daemon.request("GET", "/openapi.json")
    assert status == 200
    document = json.loads(body)
    open_lens(page, daemon)
    page.click("document.getElementById('tab-api')")
    page.wait("document.querySelectorAll('#api-view details.route').length > 0")
    assert page.eval("document.getElementById('score-view').hidden")
    paths = page.eval("[...document.querySelectorAll('#api-view details.route')].map((d) => d.dataset.path)")
    assert paths == list(document["paths"])
    page.click("document.querySelector('#api-view details.route[data-path=\"/v1/score\"] summary')")
    page.click("document.querySelector('#api-view details.route[data-path=\"/v1/score\"] button[data-schema=ScoreRequest]')")
    page.wait("document.getElementById('schema-ScoreRequest').open")
    fields = page.eval("[...document.querySelectorAll('#schema-ScoreRequest table.fields tbody tr td:first-child code')].map((c) => c.textContent)")
    assert fields == list(document["components"]["schemas"]["ScoreRequest"]["properties"])
    shoot(page, "api-reference")


def test_endorm_open_prints_and_opens_the_address(page: Lens, daemon: Daemon, tmp_path: Path):
    url = f"{daemon.base}/#token={daemon.token}"
    printed = subprocess.run([str(BIN), "open", "--socket", str(daemon.socket), "--no-browser"], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == url
    # A browser named in $BROWSER gets a page that forwards to the address: the token is in no
    # command line.
    record = tmp_path / "argv"
    record_browser = tmp_path / "browser.sh"
    record_browser.write_text(f'#!/bin/sh\nprintf "%s" "$*" > {record}\n')
    record_browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(record_browser)}
    opened = subprocess.run([str(BIN), "open", "--socket", str(daemon.socket)], capture_output=True, text=True, timeout=30, env=env)
    assert opened.returncode == 0, opened.stderr
    assert "opened in a browser" in opened.stderr
    handed = record.read_text()
    assert handed.startswith("file://") and daemon.token not in handed
    forwarder = Path(handed.removeprefix("file://"))
    assert stat.S_IMODE(forwarder.stat().st_mode) == 0o600
    # Chromium, given that file, lands on the lens with the token taken in.
    page.goto(handed)
    page.wait(f"location.origin === {json.dumps(daemon.base)} && document.getElementById('status')?.textContent.includes('connected')")
    assert page.eval("location.hash") == ""
    assert page.eval("sessionStorage.getItem('endorm.token')") == daemon.token
    # No graphical session and no $BROWSER: the address, and why nothing opened.
    bare = {k: v for k, v in os.environ.items() if k not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    headless = subprocess.run([str(BIN), "open", "--socket", str(daemon.socket)], capture_output=True, text=True, timeout=30, env=bare)
    assert headless.returncode == 0 and headless.stdout.strip() == url
    assert "no graphical session" in headless.stderr
    # No daemon there: an error that says how to start one.
    missing = subprocess.run([str(BIN), "open", "--socket", str(tmp_path / "none.sock"), "--no-browser"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "endorm serve --listen" in missing.stderr


def test_the_daemon_logs_the_address(daemon: Daemon):
    log = daemon.log.read_text()
    assert f"url={daemon.base}/#token={daemon.token}" in log
    written = Path(f"{daemon.socket}.url")
    assert written.read_text() == f"{daemon.base}/#token={daemon.token}\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # The page's requests log their route, never the token in the fragment or the header.
    assert log.count(daemon.token) == 1, "the token is logged once, in the address"
