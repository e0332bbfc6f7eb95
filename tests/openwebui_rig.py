"""A real OpenWebUI 0.12 on loopback for the end-to-end tests (and the screenshot script).

- `ensure_venv()` creates, once per machine, a virtualenv outside the repository
  (`~/.cache/loom-test/openwebui-venv`, or `$LOOM_OPENWEBUI_VENV`): pip, then the CPU build of `torch==2.13.0`
  FIRST (`install_cpu_torch`: without it open-webui's sentence-transformers pulls a multi-GB CUDA torch on
  Linux), then `open-webui==0.12.4`. A marker file written last says the venv is complete and for which versions: a venv
  without it (an interrupted install) or for other versions is made again. A file lock keeps two test runs
  from building it at once.
- `OpenWebUI(...).start()` runs `open-webui serve` on a free loopback port, in its own process group, with a
  fresh DATA_DIR and offline settings (no hub downloads, no
  embeddings, no Ollama/OpenAI polling, no background tasks), signs up the admin (the first user), and has
  helpers for the functions and tools APIs.
- `install_loom_pipe()` installs loom's generated pipe (from the loom server's `GET /openwebui/pipe.py`) as
  function `loom`, switches it on and sets its valves (loom URL, proxy key).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.llm_server import free_port

OPENWEBUI_VERSION = "0.12.4"
TORCH_VERSION = "2.13.0"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
VENV = Path(os.environ.get("LOOM_OPENWEBUI_VENV") or Path.home() / ".cache" / "loom-test" / "openwebui-venv")
MARKER = ".loom-openwebui-ready"
READY = f"open-webui=={OPENWEBUI_VERSION} torch=={TORCH_VERSION}\n"
START_TIMEOUT = 300  # seconds; /health is measured at 15-73 s on 2 cores (imports, ~60 migrations)

OFFLINE_ENV = {
    "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "ENABLE_VERSION_UPDATE_CHECK": "false", "ENABLE_OLLAMA_API": "false", "ENABLE_OPENAI_API": "false",
    "RAG_EMBEDDING_MODEL": "", "BYPASS_EMBEDDING_AND_RETRIEVAL": "true", "ENABLE_WEB_SEARCH": "false",
    "ENABLE_TITLE_GENERATION": "false", "ENABLE_FOLLOW_UP_GENERATION": "false", "ENABLE_TAGS_GENERATION": "false",
    "ENABLE_AUTOCOMPLETE_GENERATION": "false", "ENABLE_RETRIEVAL_QUERY_GENERATION": "false",
    "ENABLE_PIP_INSTALL_FRONTMATTER_REQUIREMENTS": "false", "ANONYMIZED_TELEMETRY": "false", "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true",
}

ADMIN = {"name": "Ada Admin", "email": "ada@example.org", "password": "loom-e2e-password"}


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The OpenWebUI virtualenv, created when missing or incomplete. Returns its `open-webui` script."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait for it
        marker = venv / MARKER
        if not (marker.exists() and marker.read_text() == READY):
            if venv.exists():
                shutil.rmtree(venv)
            started = time.monotonic()
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([*pip, "-U", "pip"])
            install_cpu_torch(pip, log)
            _run([*pip, f"open-webui=={OPENWEBUI_VERSION}"])
            cuda = _run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.version.cuda or '')"])
            if cuda.strip():
                raise RuntimeError(f"{venv} got a CUDA build of torch (CUDA {cuda.strip()}): not marked complete")
            marker.write_text(READY)
            log(f"OpenWebUI venv created in {time.monotonic() - started:.0f} s: {venv}")
    return venv / "bin" / "open-webui"


def _run(step: list[str]) -> str:
    done = subprocess.run(step, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def install_cpu_torch(pip: list[str], log=print) -> None:
    """torch==TORCH_VERSION, the CPU build, before open-webui (which then keeps it).

    PyPI's Linux torch is the CUDA build (~2.7 GB with its nvidia-* wheels); PyTorch's CPU index serves
    `2.13.0+cpu` (~200 MB). torch alone comes from there (`--no-deps`: that index mirrors few other packages,
    and replacing a configured PyPI mirror would break it); pip's configured find-links still apply, so a
    local CPU wheel is used when the index is unreachable. Failing both, the configured indexes are used
    only if what they resolve is no CUDA build (no nvidia-* package), else a clear error. macOS wheels on
    PyPI are CPU builds (with MPS): no special index there.
    """
    if sys.platform != "darwin":
        done = subprocess.run([*pip, "--no-deps", "--index-url", CPU_TORCH_INDEX, "--timeout", "15", "--retries",
                               "1", f"torch=={TORCH_VERSION}"], capture_output=True, text=True)
        if done.returncode != 0:
            report = json.loads(_run([*pip, "--dry-run", "--report", "-", f"torch=={TORCH_VERSION}"]))
            cuda = sorted(i["metadata"]["name"] for i in report["install"]
                          if i["metadata"]["name"].lower().startswith("nvidia-"))
            if cuda:
                raise RuntimeError(
                    f"the CPU build of torch=={TORCH_VERSION} is not reachable ({CPU_TORCH_INDEX}: "
                    f"{done.stderr.strip().splitlines()[-1:]}) and the configured index resolves a CUDA build "
                    f"(it pulls {', '.join(cuda[:3])}, ...). Make the CPU wheel reachable, e.g. its file in a "
                    f"directory named by PIP_FIND_LINKS, and run again")
            log(f"{CPU_TORCH_INDEX} unreachable; torch=={TORCH_VERSION} from the configured index is a CPU build")
    _run([*pip, f"torch=={TORCH_VERSION}"])  # its dependencies (or, on macOS, torch) from the configured index


class OpenWebUI:
    """`open-webui serve` on loopback, offline, with a fresh data directory; the first signup is the admin."""

    def __init__(self, data_dir: Path, venv: Path = VENV):
        self.data_dir = data_dir
        self.venv = venv
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "openwebui.log"
        self.process: subprocess.Popen | None = None
        self.token = ""
        self.user: dict = {}
        self.startup_seconds = 0.0

    def start(self, timeout: float = START_TIMEOUT) -> OpenWebUI:
        script = ensure_venv(self.venv)
        data = self.data_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("LOOM_", "OPENAI_", "OLLAMA_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(OFFLINE_ENV, DATA_DIR=str(data), WEBUI_SECRET_KEY=secrets.token_hex(32),
                   PATH=f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        log = open(self.log_path, "ab")
        started = time.monotonic()
        self.process = subprocess.Popen([str(script), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                        cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"OpenWebUI exited early:\n{self.log()[-5000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"OpenWebUI did not start in {timeout} s:\n{self.log()[-5000:]}")
            time.sleep(0.5)
        self.startup_seconds = time.monotonic() - started
        self.user = self.call("POST", "/api/v1/auths/signup", ADMIN, auth=False)
        assert self.user.get("role") == "admin", self.user
        self.token = self.user["token"]
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def headers(self) -> dict:
        return {"authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True, timeout: float = 60):
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=timeout,
                                 headers=self.headers if auth else {})
        if response.status_code != 200:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json()

    # ------------------------------------------------------------------------------------ functions, tools

    def install_function(self, function_id: str, content: str, valves: dict | None = None) -> None:
        self.call("POST", "/api/v1/functions/create",
                  {"id": function_id, "name": function_id, "content": content, "meta": {"description": "loom"}})
        toggled = self.call("POST", f"/api/v1/functions/id/{function_id}/toggle")
        assert toggled.get("is_active") is True, toggled
        if valves:
            self.call("POST", f"/api/v1/functions/id/{function_id}/valves/update", valves)

    def create_tool(self, tool_id: str, content: str, description: str = "") -> None:
        self.call("POST", "/api/v1/tools/create",
                  {"id": tool_id, "name": tool_id, "content": content, "meta": {"description": description}})

    def set_tool_user_valves(self, tool_id: str, valves: dict) -> None:
        self.call("POST", f"/api/v1/tools/id/{tool_id}/valves/user/update", valves)

    def create_model(self, model_id: str, name: str, base_model_id: str, tool_ids: list[str]) -> None:
        """A workspace model on top of `base_model_id` with the workspace tools `tool_ids` on by default: the
        page switches them on whenever the model is picked for a new chat."""
        self.call("POST", "/api/v1/models/create", {"id": model_id, "name": name, "base_model_id": base_model_id,
                                                     "meta": {"toolIds": tool_ids}, "params": {}})

    def model_ids(self) -> list[str]:
        return [m["id"] for m in self.call("GET", "/api/models")["data"]]

    # ----------------------------------------------------------------------------------------------- chats

    def chat(self, model: str, messages: list[dict], **fields) -> tuple[str, list[dict]]:
        """API-mode chat (`POST /api/chat/completions`, streamed): (the text, every parsed `data:` chunk)."""
        body = {"model": model, "stream": True, "messages": messages, **fields}
        chunks: list[dict] = []
        with httpx.stream("POST", f"{self.url}/api/chat/completions", json=body, headers=self.headers,
                          timeout=120) as response:
            if response.status_code != 200:
                raise AssertionError(f"chat -> {response.status_code}: {response.read().decode()[:2000]}")
            for line in response.iter_lines():
                if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                    chunks.append(json.loads(line[6:]))
        text = "".join((choice.get("delta") or {}).get("content") or ""
                       for chunk in chunks for choice in chunk.get("choices") or [])
        return text, chunks

    async def ui_chat(self, model: str, content: str, tool_ids: list[str] | None = None,
                      timeout: float = 120) -> tuple[dict, list[dict]]:
        """A chat as the browser makes it (UI mode): a socket.io session of this user, the request with its
        `session_id`, and a new chat created server-side. Waits for `chat:completion` with `done: true`;
        returns (the stored assistant message, every socket.io `events` payload of that chat)."""
        import socketio  # the `test` extra; only the UI-mode helpers need it

        events: list[dict] = []
        finished = asyncio.Event()
        client = socketio.AsyncClient(reconnection=False)

        @client.on("events")
        async def on_event(payload):
            events.append(payload)
            data = payload.get("data") or {}
            if (data.get("type") == "chat:completion" and (data.get("data") or {}).get("done")) or \
                    data.get("type") == "chat:message:error":
                finished.set()

        await client.connect(self.url, socketio_path="/ws/socket.io", transports=["websocket"],
                             auth={"token": self.token}, wait_timeout=30)
        try:
            joined = await client.call("user-join", {"auth": {"token": self.token}}, timeout=30)
            assert joined["id"] == self.user["id"], joined  # the answer of user-join: in the user's room
            user_message_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
            body = {
                "model": model, "stream": True, "messages": [{"role": "user", "content": content}],
                "params": {}, "features": {}, "tool_ids": tool_ids or [], "session_id": client.get_sid("/"),
                "parent_id": None, "id": message_id, "background_tasks": {},
                "user_message": {"id": user_message_id, "parentId": None, "childrenIds": [], "role": "user",
                                 "content": content, "timestamp": int(time.time()), "models": [model]},
            }
            ack = await asyncio.to_thread(self.call, "POST", "/api/chat/completions", body)
            chat_id = ack["chat_id"]
            await asyncio.wait_for(finished.wait(), timeout)
        finally:
            await client.disconnect()
        for _ in range(50):  # the final save may land just after the last event
            chat = await asyncio.to_thread(self.call, "GET", f"/api/v1/chats/{chat_id}")
            message = chat["chat"]["history"]["messages"].get(message_id) or {}
            if message.get("done"):
                break
            await asyncio.sleep(0.1)
        message["chat_id"] = chat_id
        return message, [e for e in events if e.get("chat_id") == chat_id]


def install_loom_pipe(openwebui: OpenWebUI, loom_url: str, api_key: str) -> str:
    """loom's generated pipe, as served by the loom server, installed as function `loom`; returns the source."""
    source = httpx.get(f"{loom_url}/openwebui/pipe.py", timeout=30).text
    openwebui.install_function("loom", source, {"loom_url": loom_url, "api_key": api_key})
    return source
