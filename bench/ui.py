"""``bench ui``: the MLflow UI over a store, started, watched and stopped as one command.

``mlflow server`` reports a port it cannot bind in its log and still exits 0, so the port is
checked first (a number in 1..65535 that nothing listens on), and the server runs as a child
whose health endpoint is polled: a server that exits or never answers is one error line
(exit 2) quoting the cause from its log, which is kept in a file. Once up, ``bench ui`` waits
for it; Ctrl-C or SIGTERM stops it, and it is told to stop if ``bench ui`` itself is killed.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.errors import BenchError, shorten

START_TIMEOUT = 180.0  # seconds: importing mlflow and migrating a store is slow on a loaded machine


def server_command(uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1", "--app-name", "distill-bench"]


def check_port(host: str, port: int) -> None:
    """A BenchError unless ``host:port`` could be served: a valid port nobody listens on."""
    if not 1 <= port <= 65535:
        raise BenchError(f"--port {port} is not a TCP port; use 1..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise BenchError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BenchError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; pick another --port "
                             f"(or stop what holds it)") from None


TRAINING_VIEW = "workflowType=machine_learning"


def serve(uri: str, host: str, port: int, timeout: float = START_TIMEOUT) -> int:
    """Run the MLflow server until it is stopped; a BenchError if it does not come up."""
    check_port(host, port)
    fd, name = tempfile.mkstemp(prefix=f"bench-ui-{port}-", suffix=".log")
    log = Path(name)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI for {uri} at http://{host}:{port} (starting; Ctrl-C stops it; server log {log})",
          flush=True)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(server_command(uri, host, port), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_stop_with_parent)
    keep_log = True  # the log is the evidence of a failure; a server that served is not one
    try:
        _wait_up(proc, _probe_url(host, port), log, timeout)
        # the served app (bench/ui_app.py) opens on model training unless the browser chose
        # GenAI before; the link asks for training runs whatever the browser chose
        print(f"serving http://{host}:{port}; training runs: http://{host}:{port}/#/experiments?{TRAINING_VIEW}",
              flush=True)
        keep_log = False
        code = proc.wait()
        if code != 0:
            keep_log = True
            raise BenchError(f"the MLflow server stopped (exit {code}): {_cause(log)}; its log: {log}")
        return 0
    finally:
        _stop(proc)
        if not keep_log:
            log.unlink(missing_ok=True)


def _wait_up(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise BenchError(f"the MLflow server did not start (exit {code}): {_cause(log)}; its log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the MLflow server did not answer {url} within {timeout:.0f} s; its log: {log}")
        time.sleep(0.5)


def _probe_url(host: str, port: int) -> str:
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{local}]' if ':' in local else local}:{port}/health"


def _cause(log: Path) -> str:
    """The server log's last line that reports an error (else its last line), without the
    logger's time stamp and level."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errors = [x for x in lines if re.search(r"error|exception|refused|denied", x, re.I)]
    line = (errors or lines or ["no output"])[-1]
    return shorten(re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (ERROR|CRITICAL|WARNING|INFO):?\s*", "", line), 240)


def _stop_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when ``bench ui`` dies, even by kill -9 (the
    server passes SIGTERM on to its workers)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the server outlives a killed bench ui, as it would any shell


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
