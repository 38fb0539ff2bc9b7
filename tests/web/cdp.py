"""Just enough of the Chrome DevTools Protocol to drive Debian's real Chromium from the tests:
the browser is started with `--remote-debugging-pipe` (commands and events as NUL-terminated JSON
on its file descriptors 3 and 4, what Puppeteer uses too), each page is a target in a browser
context of its own (its own sessionStorage), attached in flat mode. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

FLAGS = [
    "--headless",
    "--no-sandbox",  # as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]


class CdpError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium and its protocol pipe."""

    def __init__(self, binary: str, user_data_dir: Path, log: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def pipes_at_3_and_4() -> None:
            # Through high descriptors, so that neither dup2 clobbers the other's source.
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 100)
            os.dup2(b, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self._log = open(log, "ab")
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=pipes_at_3_and_4,
            close_fds=False,  # Python's own descriptors are not inheritable; 3 and 4 are
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: list[tuple[str | None, str, dict]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._changed:
                    self._replies[-1] = {"error": {"message": "Chromium closed its pipe"}}
                    self._changed.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                data = json.loads(message)
                with self._changed:
                    if "id" in data:
                        self._replies[data["id"]] = data
                    else:
                        self.events.append((data.get("sessionId"), data["method"], data.get("params", {})))
                    self._changed.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._changed:
            while ident not in self._replies:
                if -1 in self._replies:
                    raise CdpError(f"{method}: Chromium closed its pipe")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"{method}: no reply in {timeout} s")
                self._changed.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, predicate: Callable[[str | None, str, dict], bool], timeout: float = 30, start: int = 0) -> dict:
        """The params of the first event from index `start` on that `predicate` accepts."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for session, method, params in self.events[start:]:
                    if predicate(session, method, params):
                        return params
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError("no such event in time")
                self._changed.wait(left)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except CdpError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        self._log.close()


KEYS = {
    "Tab": ("Tab", 9, None),
    "Enter": ("Enter", 13, "\r"),
    "ArrowRight": ("ArrowRight", 39, None),
    "ArrowLeft": ("ArrowLeft", 37, None),
    "Escape": ("Escape", 27, None),
}


# What Chromium says when a page navigates while an expression is evaluated in it.
NAVIGATED = ("context", "inspected target navigated")


class Page:
    """One tab in a fresh browser context, with what it logged and the dialogs it opened."""

    def __init__(self, browser: Chromium, width: int = 1280, height: int = 900):
        self.browser = browser
        self.context = browser.send("Target.createBrowserContext")["browserContextId"]
        self.target = browser.send("Target.createTarget", {"url": "about:blank", "browserContextId": self.context})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        self.first_event = len(browser.events)
        for domain in ("Page", "Runtime", "Log"):
            self.cmd(f"{domain}.enable")
        self.cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def cmd(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def _mine(self) -> list[tuple[str, dict]]:
        return [(m, p) for s, m, p in self.browser.events[self.first_event:] if s == self.session]

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and failed loads, as text."""
        found = []
        for method, params in self._mine():
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                entry = params["entry"]
                found.append(f"log {entry['level']}: {entry['text']} {entry.get('url', '')}")
        return found

    def dialogs(self) -> list[dict]:
        return [p for m, p in self._mine() if m == "Page.javascriptDialogOpening"]

    def goto(self, url: str, timeout: float = 30) -> None:
        start = len(self.browser.events)
        navigated = self.cmd("Page.navigate", {"url": url})
        if "errorText" in navigated:
            raise CdpError(f"{url}: {navigated['errorText']}")
        if "loaderId" not in navigated:
            return  # within the document (a new fragment): nothing loads
        self.browser.wait_event(lambda s, m, p: s == self.session and m == "Page.loadEventFired", timeout, start)

    def eval(self, expression: str, timeout: float = 30) -> Any:
        result = self.cmd("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except CdpError as error:
                # The page navigated while it was asked (a forwarding page, a reload): Chromium
                # answers that its execution context went away, or that the inspected target
                # navigated; ask again in the new document.
                if not any(sign in str(error).lower() for sign in NAVIGATED):
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout} s: {expression}")
            time.sleep(0.05)

    def key(self, name: str) -> None:
        key, code, text = KEYS[name]
        down: dict[str, Any] = {"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        if text:
            down["text"] = text
        self.cmd("Input.dispatchKeyEvent", down)
        self.cmd("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code})

    def type(self, text: str) -> None:
        self.cmd("Input.insertText", {"text": text})

    def center(self, js_element: str) -> tuple[float, float]:
        """The centre of the first box of the element `js_element` evaluates to, scrolled into view."""
        x, y = self.eval(
            f"(() => {{ const e = {js_element}; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getClientRects()[0]; return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        return x, y

    def mouse_move(self, x: float, y: float) -> None:
        self.cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, js_element: str) -> None:
        x, y = self.center(js_element)
        self.mouse_move(x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.cmd("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path: Path, full: bool = False, region: str | None = None) -> bytes:
        """The window; with `full`, the whole page; with `region`, the box from the top of the
        element selected by the CSS selector `region` to the page's end."""
        params: dict[str, Any] = {"format": "png"}
        if full or region:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            top = self.eval(f"document.querySelector({json.dumps(region)}).getBoundingClientRect().top + scrollY - 8") if region else 0
            params.update({"captureBeyondViewport": True, "clip": {"x": 0, "y": top, "width": w, "height": h - top, "scale": 1}})
        data = base64.b64decode(self.cmd("Page.captureScreenshot", params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target}, timeout=10)
            self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context}, timeout=10)
        except CdpError:
            pass


def image_stats(viewer: Page, data: bytes) -> dict:
    """Size, number of colours and share of the commonest colour of a PNG, decoded by the browser
    in a blank page of its own (not the page under test)."""
    b64 = base64.b64encode(data).decode()
    return viewer.eval(
        "(async () => {"
        f" const bytes = Uint8Array.from(atob('{b64}'), (c) => c.charCodeAt(0));"
        " const image = await createImageBitmap(new Blob([bytes], {type: 'image/png'}));"
        " const canvas = new OffscreenCanvas(image.width, image.height);"
        " const g = canvas.getContext('2d'); g.drawImage(image, 0, 0);"
        " const px = g.getImageData(0, 0, image.width, image.height).data;"
        " const counts = new Map();"
        " for (let i = 0; i < px.length; i += 4) { const k = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2]; counts.set(k, (counts.get(k) || 0) + 1); }"
        " return {width: image.width, height: image.height, colours: counts.size,"
        "  dominant: Math.max(...counts.values()) / (image.width * image.height)}; })()"
    )


def assert_not_blank(viewer: Page, data: bytes, what: str) -> dict:
    """Fails unless the PNG has many colours and no colour covers nearly all of it."""
    stats = image_stats(viewer, data)
    assert stats["width"] >= 300 and stats["height"] >= 200, f"{what}: {stats}"
    assert stats["colours"] >= 50, f"{what}: only {stats['colours']} colours: blank? {stats}"
    assert stats["dominant"] < 0.97, f"{what}: one colour covers {stats['dominant']:.1%}: blank?"
    return stats
