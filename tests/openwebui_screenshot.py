"""Screenshot of a loom chat in a real OpenWebUI, for the README: `docs/openwebui-chat.png`.

Run by hand from the repository root (needs Debian's chromium: `apt-get install -y chromium`)::

    .venv/bin/python -m tests.openwebui_screenshot [--output docs/openwebui-chat.png]

It starts the scripted LLM, loom (proxy key) and OpenWebUI (tests/openwebui_rig.py: its venv is created on
first use), installs the generated pipe and a workspace tool with a user valve, makes one chat the way the
browser does (a backend tool, a chat tool, a status line), then opens that chat in headless Chromium, logged in
by seeding `localStorage.token`, and saves a screenshot through the DevTools protocol (no extra packages).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import websockets

from tests.conftest import REPO, LoomServer
from tests.llm_server import LLMServer
from tests.openwebui_browser import CHROMIUM, Page
from tests.openwebui_browser import CHROMIUM_FLAGS as BROWSER_FLAGS
from tests.openwebui_rig import OpenWebUI, install_loom_pipe
from tests.test_openwebui_e2e import PROXY_KEY, WEATHER_TOOL, call

CHROMIUM_FLAGS = [*BROWSER_FLAGS[:-2], "--window-size=1100,600", "--remote-debugging-port=0"]


async def make_chat(openwebui: OpenWebUI, llm: LLMServer) -> str:
    openwebui.set_tool_user_valves("weather", {"unit": "C"})
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "23*19"}),
                               call("call_weather", "get_weather", {"city": "Lyon"})]},
               {"text": "23 × 19 is **437**, and it is 21°C in Lyon right now: a fine day for a walk."})
    message, _ = await openwebui.ui_chat("loom.agent", "What is 23*19? And how warm is it in Lyon?",
                                         tool_ids=["weather"])
    assert message.get("statusHistory") and "details" in message["content"], message
    return message["chat_id"]


async def screenshot(openwebui: OpenWebUI, chat_id: str, output: Path, profile: Path) -> None:
    chromium = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        target = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Emulation.setDeviceMetricsOverride", width=1100, height=600, deviceScaleFactor=1,
                            mobile=False)
            await page.send("Page.navigate", url=f"{openwebui.url}/auth")
            await page.wait_for("document.readyState === 'complete'")
            await page.js(f"localStorage.setItem('token', {json.dumps(openwebui.token)})")
            await page.send("Page.navigate", url=f"{openwebui.url}/c/{chat_id}")
            await page.wait_for("document.body && document.body.innerText.includes('View Result from')")
            # The first login shows a "What's New" dialog: close it.
            await page.js("""[...document.querySelectorAll('button')].filter(b => /Let's Go/.test(b.innerText))
                             .forEach(b => b.click())""")
            await page.wait_for("!document.body.innerText.includes(\"Let's Go\")")
            await page.wait_for("document.querySelector('.status-description') !== null")
            # Open the chat tool's block, to show its input and output.
            await page.js("""(() => {
                const hits = [...document.querySelectorAll('button, div, span')]
                    .filter(e => e.innerText && e.innerText.trim() === 'View Result from get_weather');
                if (hits.length) hits[hits.length - 1].click();
            })()""")
            await page.wait_for("document.body.innerText.includes('Lyon: 21°C')", timeout=10)
            await asyncio.sleep(1.5)  # fonts and transitions settle
            shot = await page.send("Page.captureScreenshot", format="png")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(base64.b64decode(shot["data"]))
    finally:
        chromium.terminate()
        chromium.wait(10)


async def main(output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="loom-shot-") as tmp_dir:
        tmp = Path(tmp_dir)
        llm = LLMServer().start()
        loom = openwebui = None
        try:
            (tmp / "loom").mkdir()
            loom = LoomServer(tmp / "loom", LOOM_LLM_BASE_URL=llm.url, LOOM_API_KEYS=f"{PROXY_KEY}=proxy").start()
            (tmp / "openwebui").mkdir()
            openwebui = OpenWebUI(tmp / "openwebui").start()
            install_loom_pipe(openwebui, loom.url, PROXY_KEY)
            openwebui.create_tool("weather", WEATHER_TOOL, "Weather")
            chat_id = await make_chat(openwebui, llm)
            (tmp / "chromium").mkdir()
            await screenshot(openwebui, chat_id, output, tmp / "chromium")
        finally:
            for server in (openwebui, loom, llm):
                if server:
                    server.stop()
    print(f"{output} ({output.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "openwebui-chat.png")
    asyncio.run(main(parser.parse_args().output))
