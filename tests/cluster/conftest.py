"""A real two-node Ray cluster on this machine, started with `ray start` and stopped without
`ray stop` (which would kill every Ray on the machine, other people's included).

Each node runs `ray start --block` as a child of the test process, in its own session,
with its own `--temp-dir` and explicit free ports, and its own Ray auth token (token
authentication is on, as in Ray's default). Stopping sends SIGTERM to those two processes
(`ray start --block` then shuts its node down), waits, and SIGKILLs whatever is left of
the processes recorded as theirs: their descendants, and any process whose command line
names this cluster's temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
GIB = 1024**3


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free right now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalRayCluster:
    """A head node and one worker node, each `ray start --block` in its own session."""

    root: Path
    token: str
    gcs_port: int = 0
    dashboard_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        """The Jobs API (dashboard) URL."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client of this cluster: its token, no stray Ray address."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "VECTUNE_RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        # as a user would with the venv activated: job entrypoints run `python` from the PATH
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   # Ray Data starts dispatching only once every encoder actor is up, so the
                   # actor on the (slower to start) worker node gets batches too
                   RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="300",
                   # on SIGTERM, stop the node now instead of draining it first (up to 30 s)
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        env.update(extra)
        return env

    # -- starting ------------------------------------------------------------------------
    def _node(self, name: str, args: list[str]) -> None:
        ports = free_ports(7)
        cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               f"--temp-dir={self.root / name}", "--min-worker-port=0", "--max-worker-port=0",
               f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
               f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
               f"--metrics-export-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}", *args]
        log = open(self.root / f"{name}.log", "w")
        # own session: a Ctrl-C in the terminal reaches pytest, which then stops the nodes in order
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        self.pids.add(proc.pid)

    def start(self, timeout: float = 90.0) -> None:
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        self._node("head", ["--head", f"--port={self.gcs_port}", "--num-cpus=1", '--resources={"head_node": 1}',
                            f"--object-store-memory={GIB}", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client_port}"])
        deadline = time.monotonic() + timeout
        self._wait(lambda: self._get("/api/version") is not None, deadline, "the head's dashboard")
        self._node("worker", [f"--address={self.gcs_address}", "--num-cpus=1", '--resources={"worker_node": 1}',
                              f"--object-store-memory={GIB // 2}"])
        self._wait(lambda: len(self.alive_nodes()) == 2, deadline, "two alive nodes")

    def _wait(self, ready, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"`ray start` of the {name} node exited ({proc.returncode}):\n{self.log(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.log('head')}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _get(self, path: str):
        req = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def alive_nodes(self) -> list[dict]:
        """Alive nodes as the state API lists them (node_id, node_ip, is_head_node, resources_total)."""
        data = self._get("/api/v0/nodes?limit=100&detail=false")
        if not data or not data.get("result"):
            return []
        rows = data["data"]["result"]["result"]
        return [n for n in rows if n.get("state") == "ALIVE"]

    # -- stopping ------------------------------------------------------------------------
    def _ours(self) -> list:
        import psutil

        found = {}
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                found[pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        marker = f"{self.root}/"  # every node's --temp-dir is under it
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the two `ray start --block` processes, then SIGKILL what is left of ours."""
        import psutil

        victims = self._ours()  # recorded before the parents go, while the tree is intact
        for name in ("worker", "head"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.25)
        for proc in victims + self._ours():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def leftovers(self) -> list[int]:
        return [p.pid for p in self._ours() if _alive(p)]


def _alive(proc) -> bool:
    """Running and not a zombie (an orphaned zombie waits for PID 1, which may never reap it)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def ray_cluster():
    """A running two-node cluster (head: 1 CPU, `head_node`; worker: 1 CPU, `worker_node`)."""
    # short path: Ray's Unix sockets live under the temp dir (107-byte limit)
    root = Path(tempfile.mkdtemp(prefix="vtc-", dir="/tmp"))
    cluster = LocalRayCluster(root=root, token=secrets.token_hex(24))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster survived: {left}"
