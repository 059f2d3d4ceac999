"""A short load run: many concurrent clients, streaming and not, some of them
hanging up at random points, some sending garbage.  The server must keep
serving: every stream that stayed to the end equals its single-stream
(greedy) answer, no slot is left behind, and memory does not grow without
bound.  PPD_LOAD_SECONDS (default 12) sets the length; the acceptance run of
issue 5 (64 clients, 5 minutes) is this test with PPD_LOAD_SECONDS=300
PPD_LOAD_CLIENTS=64 (`make soak-serve`).  PPD is on, with the adapter committed
next to the model (named, so it is on even where its tuning says it does not
pay on this CPU), or an untrained one when there is none."""
import json
import os
import random
import re
import socket
import subprocess
import threading
import time

import requests

from conftest import MODEL, PPD_BIN, start_server

SECONDS = float(os.environ.get("PPD_LOAD_SECONDS", "12"))
CLIENTS = int(os.environ.get("PPD_LOAD_CLIENTS", "16"))
PROMPTS = [f"Give me one sentence about {t}." for t in ["cats", "rain", "music", "ships", "stars", "apples"]]


def stream_text(url, prompt, n, stop_after=None):
    """Streamed greedy answer; with stop_after, hang up after that many events (returns None)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0, "stream": True}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        text, events = "", 0
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue
            events += 1
            if stop_after is not None and events >= stop_after:
                return None
            if line == b"data: [DONE]":
                return text
            obj = json.loads(line[6:])
            assert "error" not in obj, obj
            if obj["choices"]:
                text += obj["choices"][0]["delta"].get("content") or ""
    raise AssertionError("stream ended without [DONE]")


def rss(server):
    return server.metrics()["ppd_process_resident_memory_bytes"]


def load_adapter(tmp_path_factory):
    committed = re.sub(r"(\.Q\w+)?\.gguf$", ".ppd.gguf", MODEL)
    if os.path.exists(committed):
        return committed
    path = str(tmp_path_factory.mktemp("load-adapter") / "x.ppd.gguf")
    subprocess.run([PPD_BIN, "adapter", "init", "-m", MODEL, "-o", path], check=True, capture_output=True)
    return path


def test_load_with_disconnects(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "4", "-c", "512", "--max-queue", "256",
                     "--ppd", load_adapter(tmp_path_factory), name="load")
    try:
        n = 24
        ref = {p: stream_text(s.url, p, n) for p in PROMPTS}
        rss0 = rss(s)
        stop_at = time.time() + SECONDS
        failures, counts = [], {"done": 0, "dropped": 0, "bad": 0, "nonstream": 0}
        lock = threading.Lock()

        def client(seed):
            rnd = random.Random(seed)
            while time.time() < stop_at:
                p = rnd.choice(PROMPTS)
                kind = rnd.random()
                try:
                    if kind < 0.45:
                        got = stream_text(s.url, p, n)
                        if got != ref[p]:
                            failures.append((p, got, ref[p]))
                        key = "done"
                    elif kind < 0.75:
                        stream_text(s.url, p, n, stop_after=rnd.randint(1, 12))
                        key = "dropped"
                    elif kind < 0.9:
                        r = requests.post(s.url + "/v1/chat/completions", timeout=120, json={
                            "messages": [{"role": "user", "content": p}], "max_tokens": n, "temperature": 0})
                        if r.json()["choices"][0]["message"]["content"] != ref[p]:
                            failures.append((p, r.text, ref[p]))
                        key = "nonstream"
                    else:
                        sock = socket.create_connection(("127.0.0.1", s.port))
                        sock.sendall(rnd.choice([b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
                                                 b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Le"]))
                        sock.close()
                        key = "bad"
                except Exception as e:  # noqa: BLE001 - collected and reported
                    failures.append(("exception", repr(e)))
                    key = "bad"
                with lock:
                    counts[key] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 300)
        assert not failures, failures[:3]
        assert counts["done"] > 0 and counts["dropped"] > 0, counts
        deadline = time.time() + 30
        while time.time() < deadline and s.metrics()["ppd_num_requests_running"] > 0:
            time.sleep(0.1)
        m = s.metrics()
        assert m["ppd_num_requests_running"] == 0 and m["ppd_num_requests_waiting"] == 0
        assert m["ppd_kv_cache_usage_perc"] == 0
        # still serving, and memory did not run away (a leak per request would show over hundreds of requests)
        assert stream_text(s.url, PROMPTS[0], n) == ref[PROMPTS[0]]
        assert rss(s) < rss0 + 64 * 2 ** 20, (rss0, rss(s))
        m = s.metrics()
        print(f"load: {SECONDS:.0f} s, {CLIENTS} clients: {counts}, rss {rss0 / 2**20:.1f} -> {rss(s) / 2**20:.1f} MiB, "
              f"PPD accepted/step {m.get('ppd_spec_decode_num_accepted_tokens_total', 0) / max(1, m.get('ppd_spec_decode_num_drafts_total', 0)) + 1:.2f}")
    finally:
        assert s.stop() == 0, s.log()[-2000:]
