"""Fixtures for the integration tests: a `ppd serve` on a free loopback port.

The server binary comes from PPD_BIN (default build/ppd), the model from
PPD_TEST_MODEL.  One shared server (4 slots, one engine thread, 1 CPU thread:
this machine has 2 cores and the test client needs the other) serves most
tests; tests that need other flags start their own with `start_server`.
"""
import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests

PPD_BIN = os.environ.get("PPD_BIN", "build/ppd")
MODEL = os.environ.get("PPD_TEST_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")



def _sanitized(binary):
    """True when the binary is the ASan build of `make asan test`."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "libasan" in out


# Under ASan, freed memory waits in a quarantine (up to 256 MiB), so RSS says
# nothing about leaks there (LeakSanitizer does); and the binary is not the
# one a container image ships.
SANITIZED = _sanitized(PPD_BIN)


def _kernel_path(binary):
    """The CPU kernels' path the server takes (`ppd --version` names it;
    PPD_CPU_ISA caps it), or None."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bcpu=(\w+)", out)
    return m[1] if m else None


# How many times longer than on the AVX-512 path a request may take: client
# timeouts sized for the SIMD paths are multiplied by it.  The plain C path
# (PPD_CPU_ISA=scalar, or a CPU without AVX2) computes the same answers, but
# prefills a long prompt about 26 times slower; the AVX2 path up to 1.3 times.
TIME_FACTOR = {"scalar": 30, "avx2": 2}.get(_kernel_path(PPD_BIN), 1)


class Server:
    def __init__(self, proc, port, log_path):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def metrics(self):
        """The /metrics samples as {name_with_labels: float}."""
        out = {}
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def read_http(sock):
    """(status, body) of the one response on sock, read to the connection's close;
    a chunked body is decoded."""
    data = b""
    while True:
        d = sock.recv(65536)
        if not d:
            break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    return status, body


# Every server a test starts, so the session can read their logs at the end.
_servers = []

# What ASan, LeakSanitizer and UBSan print when they find something; on a build
# without sanitizers (plain `make test`) none of it can appear.
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |SUMMARY: UndefinedBehaviorSanitizer")


@pytest.fixture(scope="session", autouse=True)
def no_sanitizer_reports():
    """Under `make asan test` the server is built with ASan + UBSan: a report in
    any server's log (including LeakSanitizer's, printed at exit) fails the run."""
    yield
    found = []
    for s in _servers:
        if s.proc.poll() is None:
            s.stop()
        m = SANITIZER_REPORT.search(s.log())
        if m:
            log = s.log()
            found.append(f"{s.log_path}:\n" + log[max(0, m.start() - 200):m.start() + 3000])
    assert not found, "sanitizer reports in server logs:\n" + "\n".join(found)


def start_server(tmp_path_factory, *args, name="ppd"):
    log_path = str(tmp_path_factory.mktemp(name) / "server.log")
    log = open(log_path, "w")
    cmd = [PPD_BIN, "serve", "-m", MODEL, "--host", "127.0.0.1", "--port", "0", "-t", "1", *args]
    # Start-up calibration measures this device for seconds: off
    # unless a test asks for it (test_calibration.py passes --calibrate auto).
    env = dict(os.environ)
    env.setdefault("PPD_CALIBRATE", "off")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    port = None
    while time.time() < deadline and port is None:
        if proc.poll() is not None:
            raise RuntimeError(f"ppd serve exited with {proc.returncode}:\n" + open(log_path).read())
        m = re.search(r"listening on http://[^:]+:(\d+)", open(log_path).read())
        if m:
            port = int(m.group(1))
        else:
            time.sleep(0.05)
    if port is None:
        proc.kill()
        raise RuntimeError("ppd serve did not start:\n" + open(log_path).read())
    server = Server(proc, port, log_path)
    _servers.append(server)
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "4", "-c", "1024", name="shared")
    yield s
    rc = s.stop()
    assert rc == 0, s.log()


@pytest.fixture(scope="session")
def model_id(server):
    return requests.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120 * TIME_FACTOR)


_gen_cache = {}


def ppd_generate(prompt, n, chat=True, extra=()):
    """`ppd generate --json --no-ppd` for the same prompt: the reference output (plain
    decoding; the server gives the same with or without PPD, which is lossless)."""
    key = (prompt, n, chat, tuple(extra))
    if key not in _gen_cache:
        cmd = [PPD_BIN, "generate", "-m", MODEL, "-t", "1", "-c", "1024", "-n", str(n), "--json", "--no-ppd", "-p", prompt]
        if chat:
            cmd.append("--chat")
        cmd.extend(extra)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        _gen_cache[key] = json.loads(out)
    return _gen_cache[key]


def missing_tool(name, why):
    """A test that needs a tool this machine lacks: skipped (with the reason, as
    `make test` prints skips) outside CI; under CI=true a failure naming it, so
    that a green CI run has run every test."""
    msg = f"{name} is not installed ({why})"
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true runs every test: " + msg)
    pytest.skip(msg)


def pytest_collection_modifyitems(config, items):
    """Tests that only a named script runs (marked only_with_env("VAR")) are
    left out unless VAR is set: deselected, not reported as skipped."""
    keep, drop = [], []
    for item in items:
        m = item.get_closest_marker("only_with_env")
        (drop if m and not os.environ.get(m.args[0]) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config):
    config.addinivalue_line("markers", "only_with_env(var): collected only when the environment variable is set")
