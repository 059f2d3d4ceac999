"""Start-up calibration: `ppd serve` measures this device before it
reports ready (/health 503 "calibrating" until then), chooses a tree per
number of sequences, exports the choice in /metrics, stays lossless, and a
restart with the same device, model, adapter and build loads the cached table
instead of measuring again.  `ppd calibrate` prints the same table."""
import json
import os
import re
import subprocess
import time

import requests

from conftest import MODEL, PPD_BIN, ppd_generate, start_server

ARGS = ["-np", "2", "-b", "32", "-c", "512", "--calibrate", "auto"]


def wait_ready(s, timeout=120):
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.get(s.url + "/health", timeout=10)
        seen.append((r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else "ok"))
        if r.status_code == 200:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {seen[-3:]}")


def test_calibrates_then_caches(tmp_path_factory):
    cache = tmp_path_factory.mktemp("calib-cache")
    adapter = str(tmp_path_factory.mktemp("cal-adapter") / "x.ppd.gguf")
    subprocess.run([PPD_BIN, "adapter", "init", "-m", MODEL, "-o", adapter], check=True, capture_output=True)
    args = ARGS + ["--ppd", adapter, "--calib-cache", str(cache)]

    s = start_server(tmp_path_factory, *args, name="calib1")
    try:
        seen = wait_ready(s)
        assert (503, "calibrating") in seen, seen   # not ready while measuring
        log = s.log()
        assert "calibration: measured" in log, log[-3000:]
        m = requests.get(s.url + "/metrics", timeout=10).text
        assert 'ppd_calibration_info{device="cpu",cached="false"} 1' in m
        budgets = {int(b): int(v) for b, v in re.findall(r'ppd_tree_budget\{batch_size="(\d+)"\} (\d+)', m)}
        assert sorted(budgets) == [1, 2], m
        rows = {int(b): int(v) for b, v in re.findall(r'ppd_tree_rows\{batch_size="(\d+)"\} (\d+)', m)}
        assert all(rows[b] <= 32 for b in rows), rows   # every choice fits the step
        assert len(list(cache.iterdir())) == 1
        # lossless with whatever was chosen
        prompt = "Name three colours."
        ref = ppd_generate(prompt, 24)
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0}
        got = requests.post(s.url + "/v1/chat/completions", json=body, timeout=120).json()
        assert got["choices"][0]["message"]["content"] == ref["text"]
    finally:
        assert s.stop() == 0, s.log()[-2000:]

    # the same device, model, adapter and build: the cached table, no measuring
    t0 = time.time()
    s = start_server(tmp_path_factory, *args, name="calib2")
    try:
        wait_ready(s)
        ready_s = time.time() - t0
        assert "calibration: cached table loaded" in s.log()
        m = requests.get(s.url + "/metrics", timeout=10).text
        assert 'cached="true"' in m and "ppd_calibration_seconds 0" in m
        print(f"cached start: ready in {ready_s:.2f} s")
    finally:
        assert s.stop() == 0

    # `ppd calibrate` with the same settings reads the same cached table
    plot_dir = tmp_path_factory.mktemp("calib-plot")
    png = plot_dir / "curve.png"
    out = subprocess.run([PPD_BIN, "calibrate", "-m", MODEL, "--ppd", adapter, "-t", "1", "-np", "2", "-b", "32",
                          "-c", "512", "--cache", str(cache), "--plot", str(png)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "cached: not measured again" in out.stdout, out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in plot_dir.iterdir()] == ["curve.png"]   # gnuplot's inputs went elsewhere
    assert re.search(r"^1\s+\d+\s", out.stdout, re.M) and re.search(r"^2\s+\d+\s", out.stdout, re.M), out.stdout


def test_calibrate_flag_checked(tmp_path_factory):
    p = subprocess.run([PPD_BIN, "serve", "-m", MODEL, "--port", "0", "--calibrate", "sometimes"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "calibrate" in p.stderr


def test_generate_follows_this_device(tmp_path_factory):
    """`ppd generate` with the adapter found next to the model lets this
    device's calibration decide: measured on first use, cached after, PPD on
    exactly when a tree was chosen, and the same text as plain decoding
    whatever the choice.  PPD_CALIBRATE=off keeps the
    adapter's own tree without measuring."""
    cache = tmp_path_factory.mktemp("gen-calib-cache")
    env = {**os.environ, "PPD_CALIB_CACHE": str(cache)}
    env.pop("PPD_CALIBRATE", None)
    prompt = "Name three colours."
    cmd = [PPD_BIN, "generate", "-m", MODEL, "-t", "1", "-n", "24", "--json", "--chat", "-p", prompt]
    ref = ppd_generate(prompt, 24)
    runs = []
    for _ in range(2):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        runs.append((p.stderr, json.loads(p.stdout)))
    (first_err, first), (second_err, second) = runs
    assert "calibration (measured now" in first_err, first_err
    assert "calibration (cached in" in second_err, second_err
    assert len(list(cache.iterdir())) == 1
    for err, out in runs:
        assert out["text"] == ref["text"]
        chosen = re.search(r"chose the tree of L=(\d+)", err)
        assert bool(chosen) == bool(out.get("ppd")), err   # PPD on exactly when a tree was chosen
        assert chosen or "PPD off: calibration" in err, err
    assert first.get("ppd") == second.get("ppd")
    off = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PPD_CALIBRATE": "off"}, timeout=300)
    assert off.returncode == 0 and "calibration" not in off.stderr, off.stderr
    assert json.loads(off.stdout)["ppd"] is True and json.loads(off.stdout)["text"] == ref["text"]
