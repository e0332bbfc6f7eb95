"""The pipe as one rendered file, loaded as OpenWebUI loads it (exec into a fresh module): from
`GET /openwebui/pipe.py` and from `loom pipe --output`."""

from __future__ import annotations

import subprocess
import sys
import types
import uuid

import httpx
import pytest

from loom.adapters.openwebui.bundle import REWRITTEN, PipeRenderError, check_pipe, render_pipe
from tests.conftest import BIN, REPO
from tests.openwebui_pipe_kit import PROXY_KEY, Emitter, a_user, block, call, chat, u
from tests.openwebui_pipe_kit import pipe_loom as pipe_loom_fixture

loom = pipe_loom_fixture  # the module's server (a fixture shared by the pipe test modules)


def load_like_openwebui(source: str) -> types.ModuleType:
    """What OpenWebUI's plugin loader does with a function's text: exec it into a fresh module."""
    for text in REWRITTEN:
        source = source.replace(text, text.replace("from ", "from open_webui."))
    name = f"function_loom_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(source, module.__dict__)  # noqa: S102 — exactly what OpenWebUI does
    return module


async def test_the_served_file_is_one_working_pipe_with_the_servers_url(loom, llm):
    response = httpx.get(f"{loom.url}/openwebui/pipe.py")  # no key needed: the file holds none
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    source = response.text
    assert check_pipe(source) == []
    assert source.splitlines()[0] == '"""' and "title: loom" in source.split('"""')[1]
    assert f'LOOM_URL = "{loom.url}"' in source
    assert not any(text in source for text in REWRITTEN)

    module = load_like_openwebui(source)
    pipe = module.Pipe()
    pipe.valves = module.Pipe.Valves(api_key=PROXY_KEY)  # the URL is the served default
    assert "agent" in [m["id"] for m in await pipe.pipes()]
    llm.script({"tool_calls": [call("call_f", "calculator", {"expression": "3*3"})]}, {"text": "Nine."})
    user = {**a_user(), "valves": module.Pipe.UserValves()}
    text, _ = await chat(pipe, [u("3*3?")], user=user, event_emitter=Emitter())
    assert text == block("call_f", "calculator", "{&quot;expression&quot;: &quot;3*3&quot;}", "9") + "\nNine."


def test_loom_pipe_writes_the_file(tmp_path):
    output = tmp_path / "loom_pipe.py"
    done = subprocess.run([str(BIN / "loom"), "pipe", "--url", "http://loom.internal:9000/", "--output",
                           str(output)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    source = output.read_text()
    assert check_pipe(source) == [] and 'LOOM_URL = "http://loom.internal:9000"' in source
    compile(source, "loom_pipe.py", "exec")
    assert load_like_openwebui(source).Pipe().valves.loom_url == "http://loom.internal:9000"

    with pytest.raises(PipeRenderError):
        render_pipe('http://x" + evil + "')
    assert check_pipe('"""\ntitle: x\n"""\nfrom utils.misc import y\n') != []
