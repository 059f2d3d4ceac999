"""Configuration: --help, bad flags, the config file < PPD_* env < flag
precedence, and the bounded queue (429 with Retry-After)."""
import os
import subprocess
import time

import requests

from conftest import MODEL, PPD_BIN, start_server


def test_help_lists_every_setting():
    p = subprocess.run([PPD_BIN, "serve", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ["-m, --model", "-a, --alias", "--host", "--port", "--api-key", "-c, --ctx-size", "-n, --n-predict",
                 "-t, --threads", "-np, --parallel", "--max-queue", "--max-body", "--config", "PPD_CTX_SIZE"]:
        assert flag in p.stdout, flag


def test_bad_settings_exit_2(tmp_path):
    for args, env, needle in [(["--bogus"], {}, "--bogus"), (["-np", "0"], {}, "[1, 256]"),
                              ([], {"PPD_PORT": "70000"}, "PPD_PORT"),
                              (["--config", str(tmp_path / "missing.conf")], {}, "missing.conf")]:
        p = subprocess.run([PPD_BIN, "serve", *args], capture_output=True, text=True, env={**os.environ, **env},
                           timeout=30)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    bad = tmp_path / "bad.conf"
    bad.write_text("parallel = 2\nwhat = 1\n")
    p = subprocess.run([PPD_BIN, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "bad.conf:2: what" in p.stderr


def test_precedence_and_queue_full(tmp_path_factory, monkeypatch):
    conf = tmp_path_factory.mktemp("conf") / "ppd.conf"
    conf.write_text(f'# test config\nmodel = "{MODEL}"\nalias = from-file\nparallel = 1\nmax-queue = 0\n'
                    "ctx-size = 512   # overridden by the flag\n")
    monkeypatch.setenv("PPD_ALIAS", "from-env")
    s = start_server(tmp_path_factory, "--config", str(conf), "-c", "300", name="conf")
    try:
        m = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]
        assert m["id"] == "from-env"           # env beats the file
        assert m["meta"]["n_ctx"] == 300       # the flag beats the file
        assert m["meta"]["n_parallel"] == 1    # the file beats the default
        # One slot, no queue: a second request while one runs is refused.
        r1 = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=60,
                           json={"messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
                                 "max_tokens": 200})
        next(r1.iter_lines())
        r2 = requests.post(s.url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r2.status_code == 429
        assert r2.headers["Retry-After"] == "1"
        assert r2.json()["error"]["type"] == "rate_limit_error"
        r1.close()
        # Its slot is free once the cancellation has come back from the engine.
        deadline = time.time() + 20
        while time.time() < deadline and s.metrics()["ppd_request_cancelled_total"] < 1:
            time.sleep(0.05)
        r3 = requests.post(s.url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r3.status_code == 200
    finally:
        assert s.stop() == 0
