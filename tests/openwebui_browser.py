"""Headless Chromium driving a real OpenWebUI page over the DevTools protocol (no extra packages).

`Browser` starts Debian's `chromium` with the flags that work in containers and CI (no sandbox, no GPU, no QUIC,
no background networking) and a fresh profile, and opens one page; `ChatPage` is that page logged in to an
OpenWebUI as its admin, with the steps a person takes: open a new chat with a model, type and send, click a
button by its label, read the text on the page, save a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import websockets

CHROMIUM = os.environ.get("LOOM_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1100,800", "--remote-debugging-port=0"]
WIDTH, HEIGHT = 1100, 800


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM}: install it (Debian/Ubuntu: apt-get install -y chromium) or point "
                "LOOM_TEST_CHROMIUM at one")
    return None


class Page:
    """The smallest DevTools-protocol client: one page target, one command at a time."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params):
        message_id = next(self.ids)
        await self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def js(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails'].get('exception', {})}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := await self.js(expression):
                return value
            await asyncio.sleep(0.2)
        text = await self.js("document.body ? document.body.innerText : ''")
        raise TimeoutError(f"the page never showed {what or expression} in {timeout:g} s; it shows:\n"
                           f"{(text or '')[-3000:]}")


class Browser:
    """Chromium in its own process group with a fresh profile; `page` is its one tab."""

    def __init__(self, profile: Path):
        self.profile = profile
        self.process: subprocess.Popen | None = None
        self._ws = None
        self.page: Page | None = None

    async def start(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"{CHROMIUM} exited with {self.process.returncode} before it listened")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with httpx.AsyncClient() as client:
            targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
        target = next(t for t in targets if t["type"] == "page")
        self._ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=None)
        self.page = Page(self._ws)
        await self.page.send("Page.enable")
        await self.page.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                             mobile=False)
        return self

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The page's answers: the last assistant message and its parts, as a person reads them.
LAST_ANSWER = "[...document.querySelectorAll('[id^=\"message-\"].w-full')].filter(e => " \
              "e.querySelector('#response-content-container')).at(-1)"


class ChatPage:
    """An OpenWebUI tab logged in as the admin whose token is given."""

    def __init__(self, page: Page, url: str, token: str):
        self.page, self.url, self.token = page, url, token

    async def login(self) -> None:
        await self.navigate(f"{self.url}/auth")
        await self.page.js(f"localStorage.setItem('token', {json.dumps(self.token)})")

    async def navigate(self, url: str) -> None:
        await self.page.send("Page.navigate", url=url)
        await self.page.wait_for("document.readyState === 'complete'", what="a loaded document")

    async def new_chat(self, model: str, shown: str = "") -> None:
        """A new chat with `model`, whose name on the page is `shown` (default: the pipe's "loom/<graph>")."""
        await self.navigate(f"{self.url}/?models={model}")
        await self.page.wait_for("!!document.querySelector('#chat-input')", what="the chat input")
        await self.dismiss_whats_new()
        shown = shown or model.replace(".", "/", 1)
        await self.page.wait_for(f"!!document.querySelector('[aria-label=\"Selected model: {shown}\"]')",
                                 what=f"model {shown} selected")

    async def dismiss_whats_new(self) -> None:
        # The first visit shows a "What's New" dialog over the page.
        await self.page.js("""[...document.querySelectorAll('button')].filter(b => /Let's Go/.test(b.innerText))
                              .forEach(b => b.click())""")

    async def send(self, text: str) -> None:
        await self.page.js("document.querySelector('#chat-input').focus()")
        await self.page.send("Input.insertText", text=text)
        await self.page.wait_for(f"document.querySelector('#chat-input').innerText.includes({json.dumps(text)})",
                                 what="the typed message in the input")
        await self.page.wait_for("!!document.querySelector('#send-message-button:not([disabled])')",
                                 what="an enabled send button")
        await self.page.js("document.querySelector('#send-message-button').click()")

    async def text(self) -> str:
        return await self.page.js("document.body.innerText") or ""

    async def answer_text(self) -> str:
        return await self.page.js(f"(({LAST_ANSWER}) || {{innerText: ''}}).innerText") or ""

    async def wait_text(self, text: str, timeout: float = 60) -> None:
        await self.page.wait_for(f"document.body.innerText.includes({json.dumps(text)})", timeout,
                                 what=repr(text))

    async def wait_answer_done(self, timeout: float = 60) -> str:
        """The last answer's text once it has finished (its Regenerate button appears only then)."""
        await self.page.wait_for(f"!!(({LAST_ANSWER}) && ({LAST_ANSWER}).querySelector("
                                 "'button[aria-label=\"Regenerate\"]'))", timeout, what="a finished answer")
        return await self.answer_text()

    async def click(self, label: str, selector: str = "button", within: str = "document") -> None:
        """Clicks the last visible element matching the selector whose label or text is `label`."""
        clicked = await self.page.js(f"""(() => {{
            const hits = [...{within}.querySelectorAll({json.dumps(selector)})].filter(e =>
                (e.getAttribute('aria-label') || e.innerText || '').trim() === {json.dumps(label)}
                && e.offsetParent !== null);
            if (!hits.length) return false;
            hits.at(-1).click();
            return true;
        }})()""")
        if not clicked:
            raise AssertionError(f"no {selector} labelled {label!r} on the page:\n{(await self.text())[-2000:]}")

    async def screenshot(self, path: Path) -> Path:
        await asyncio.sleep(0.5)  # transitions settle
        shot = await self.page.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
