"""The soak: many concurrent clients against one server, with the faults a client
on the network can cause, then SIGTERM while streams are in flight.

Each client thread loops until the time is up, picking at random: a greedy stream
read to the end (it must equal the single-stream answer), a stream it hangs up on,
a non-streamed request, a slow reader (a raw socket with a small receive window
that takes one byte a second for a while, so the server's writes block), a body
larger than the server's limit (413, before it is read), a body with invalid
UTF-8 (400), and garbage: half-sent requests, a header block too large (431).
Two more threads scrape /metrics throughout and check every exposition parses.

Afterwards every slot must be free, the prefix cache must have served prompt
tokens (the clients repeat six prompts) and keep no more than one finished
request per slot, RSS must not have grown past the warm-up level by more than
a bound, and a fresh request is still right.  Then a last
wave of streams is started and the server gets SIGTERM: each of them must still
end complete and equal to its reference, and the server exit 0 (under
`make asan test`, with no LeakSanitizer report either).  A separate test
floods a server with a small queue: the requests past the queue's room get 429
at once, while the admitted ones are still decoding.

PPD_SOAK_SECONDS (default 12) and PPD_SOAK_CLIENTS (default 16) set the size;
the full soak is `make soak` (600 s, 64 clients).  PPD is on, with the adapter
committed next to the model (named, so it is on even where its tuning says it
does not pay on this CPU), or an untrained one when there is none."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

import requests

from conftest import MODEL, PPD_BIN, SANITIZED, read_http, start_server

SECONDS = float(os.environ.get("PPD_SOAK_SECONDS", "12"))
CLIENTS = int(os.environ.get("PPD_SOAK_CLIENTS", "16"))
PROMPTS = [f"Give me one sentence about {t}." for t in ["cats", "rain", "music", "ships", "stars", "apples"]]
LONG_PROMPT = "Write a short story about a lighthouse keeper."   # the slow readers' (long answer)
N, N_LONG = 24, 160
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfa]+$')


class Busy(Exception):
    """The server answered 429 (its queue was full); seconds = how long that took."""

    def __init__(self, seconds):
        super().__init__(f"429 after {seconds:.3f} s")
        self.seconds = seconds


def chat_body(prompt, n, stream):
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0, "stream": stream}


def sse_text(lines):
    """The content of an SSE stream given as its lines (bytes); None when it did
    not end with [DONE] or carried an error event."""
    text = ""
    for line in lines:
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            return text
        obj = json.loads(line[6:])
        if "error" in obj:
            return None
        if obj["choices"]:
            text += obj["choices"][0]["delta"].get("content") or ""
    return None


def stream_text(url, prompt, n, stop_after=None):
    """Streamed greedy answer; with stop_after, hang up after that many events (returns None)."""
    t0 = time.time()
    with requests.post(url + "/v1/chat/completions", json=chat_body(prompt, n, True), stream=True, timeout=300) as r:
        if r.status_code == 429:
            raise Busy(time.time() - t0)
        assert r.status_code == 200, r.text
        lines = []
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                lines.append(line)
                if stop_after is not None and len(lines) >= stop_after:
                    return None
        text = sse_text(lines)
    assert text is not None, lines[-3:]
    return text


def raw_post(port, body, extra_headers=b"", rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # before connect: sets the window
    sock.settimeout(300)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra_headers) + body)
    return sock


def slow_stream(port, prompt, n, slow_seconds):
    """A stream read one byte a second for slow_seconds through a 4 KiB window,
    then to the end: its text, or None when it was not complete."""
    t0 = time.time()
    sock = raw_post(port, json.dumps(chat_body(prompt, n, True)).encode(), rcvbuf=4096)
    first = b""
    try:
        for _ in range(int(slow_seconds)):
            first += sock.recv(1)
            if len(first) == 1:
                t_first = time.time()
            time.sleep(1)
        rest_sock = _Prefixed(first, sock)
        status, body = read_http(rest_sock)
    finally:
        sock.close()
    if status == 429:
        raise Busy(t_first - t0)
    assert status == 200, body[:300]
    return sse_text(body.split(b"\n"))


class _Prefixed:
    """A socket whose first bytes were already taken (the slow reads)."""

    def __init__(self, prefix, sock):
        self.prefix, self.sock = prefix, sock

    def recv(self, n):
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        return self.sock.recv(n)


def huge_body(port):
    """A body declared at 64 MiB: 413 before the server reads it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 67108864\r\n\r\n")
        try:
            for _ in range(64):
                sock.sendall(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered and closed while we were sending
        try:
            status, body = read_http(sock)
        except ConnectionResetError:
            return None   # the reset can overtake the 413 on loopback; counted, not a failure
    finally:
        sock.close()
    assert status == 413, body[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"
    return status


def invalid_utf8(port):
    body = b'{"messages":[{"role":"user","content":"caf\xc3 \xff\xfe bad"}],"max_tokens":4}'
    sock = raw_post(port, body)
    try:
        status, resp = read_http(sock)
    finally:
        sock.close()
    assert status == 400, resp[:300]
    assert json.loads(resp)["error"]["message"]


def garbage(port, rnd):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        kind = rnd.randrange(4)
        if kind == 3:   # a header block past libmicrohttpd's 32 KiB connection memory: 431
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: soak\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
            status, _ = read_http(sock)
            assert status == 431, status
        else:           # half-sent or malformed: the server must just drop it
            sock.sendall([b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
                          b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Le"][kind])
    finally:
        sock.close()


def rss(server):
    return server.metrics()["ppd_process_resident_memory_bytes"]


def load_adapter(tmp_path_factory):
    committed = re.sub(r"(\.Q\w+)?\.gguf$", ".ppd.gguf", MODEL)
    if os.path.exists(committed):
        return committed
    path = str(tmp_path_factory.mktemp("soak-adapter") / "x.ppd.gguf")
    subprocess.run([PPD_BIN, "adapter", "init", "-m", MODEL, "-o", path], check=True, capture_output=True)
    return path


def scrape_metrics(url, stop, failures, counts, lock):
    while not stop.is_set():
        try:
            r = requests.get(url + "/metrics", timeout=60)
            bad = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#") and not SAMPLE.match(ln)]
            if r.status_code != 200 or bad:
                failures.append(("metrics", r.status_code, bad[:3]))
        except Exception as e:  # noqa: BLE001 - collected and reported
            failures.append(("metrics", repr(e)))
        with lock:
            counts["scrapes"] += 1
        stop.wait(0.2)


def test_soak_with_faults_then_sigterm(tmp_path_factory):
    # A queue of half the clients: with 4 slots, the busiest moments overflow it (429).
    # A drain long enough for the last wave even on a sanitized build (steps of seconds).
    s = start_server(tmp_path_factory, "-np", "4", "-c", "512", "--max-queue", str(max(4, CLIENTS // 2)),
                     "--drain-timeout", "600", "--ppd", load_adapter(tmp_path_factory), name="soak")
    stopped = False
    try:
        ref = {p: stream_text(s.url, p, N) for p in PROMPTS}
        ref_long = stream_text(s.url, LONG_PROMPT, N_LONG)
        t0 = time.time()
        stop_at = t0 + SECONDS
        failures = []
        counts = dict.fromkeys(["done", "dropped", "nonstream", "slow", "429", "huge", "huge_reset", "utf8",
                                 "garbage", "scrapes"], 0)
        busy_s = [0.0]   # the slowest 429
        lock = threading.Lock()

        def client(seed):
            rnd = random.Random(seed)
            while time.time() < stop_at:
                p = rnd.choice(PROMPTS)
                kind = rnd.random()
                try:
                    if kind < 0.34:
                        got = stream_text(s.url, p, N)
                        if got != ref[p]:
                            failures.append((p, got, ref[p]))
                        key = "done"
                    elif kind < 0.54:
                        stream_text(s.url, p, N, stop_after=rnd.randint(1, 12))
                        key = "dropped"
                    elif kind < 0.66:
                        t0 = time.time()
                        r = requests.post(s.url + "/v1/chat/completions", json=chat_body(p, N, False), timeout=300)
                        if r.status_code == 429:
                            raise Busy(time.time() - t0)
                        if r.json()["choices"][0]["message"]["content"] != ref[p]:
                            failures.append((p, r.text, ref[p]))
                        key = "nonstream"
                    elif kind < 0.72:
                        got = slow_stream(s.port, LONG_PROMPT, N_LONG, rnd.randint(2, 12))
                        if got != ref_long:
                            failures.append(("slow reader", got, ref_long))
                        key = "slow"
                    elif kind < 0.78:
                        key = "huge" if huge_body(s.port) else "huge_reset"
                    elif kind < 0.86:
                        invalid_utf8(s.port)
                        key = "utf8"
                    else:
                        garbage(s.port, rnd)
                        key = "garbage"
                except Busy as b:
                    key = "429"
                    with lock:
                        busy_s[0] = max(busy_s[0], b.seconds)
                    time.sleep(rnd.uniform(0.5, 1.0))   # as Retry-After: 1 asks
                except Exception as e:  # noqa: BLE001 - collected and reported
                    failures.append(("exception", repr(e)))
                    key = "garbage"
                with lock:
                    counts[key] += 1

        stop_scraping = threading.Event()
        scrapers = [threading.Thread(target=scrape_metrics, args=(s.url, stop_scraping, failures, counts, lock))
                    for _ in range(2)]
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in scrapers + threads:
            t.start()
        # RSS once the first bursts of concurrent buffers are in (a quarter of the way).
        time.sleep(SECONDS / 4)
        rss_warm = rss(s)
        for t in threads:
            t.join(timeout=SECONDS + 600)
        stop_scraping.set()
        for t in scrapers:
            t.join(timeout=60)
        assert not failures, failures[:3]
        assert counts["done"] > 0 and counts["dropped"] > 0, counts
        deadline = time.time() + 60
        while time.time() < deadline and s.metrics()["ppd_num_requests_running"] > 0:
            time.sleep(0.1)
        m = s.metrics()
        assert m["ppd_num_requests_running"] == 0 and m["ppd_num_requests_waiting"] == 0
        assert m["ppd_kv_cache_usage_perc"] == 0
        # The prefix cache was in play (the clients repeat six prompts) and, idle, keeps at most
        # one finished request's entries per slot: nothing it holds is counted as in use.
        assert m["ppd_prefix_cache_enabled"] == 1
        assert m["ppd_prefix_cache_hits_total"] > 0, m["ppd_prefix_cache_queries_total"]
        assert m["ppd_prefix_cache_slots"] <= 4 and m["ppd_prefix_cache_tokens"] <= 4 * 512
        # still serving, and memory flat after the warm-up (a leak per request would show over hundreds)
        assert stream_text(s.url, PROMPTS[0], N) == ref[PROMPTS[0]]
        rss_end = rss(s)
        assert SANITIZED or rss_end < rss_warm + 48 * 2 ** 20, (rss_warm, rss_end)
        n_req = counts["done"] + counts["dropped"] + counts["nonstream"] + counts["slow"]
        print(f"\nsoak: {SECONDS:.0f} s, {CLIENTS} clients: {counts}; {n_req} generation requests; "
              f"rss warm {rss_warm / 2**20:.1f} MiB -> end {rss_end / 2**20:.1f} MiB; "
              f"slowest 429 {busy_s[0] * 1e3:.0f} ms; max step {m['ppd_step_duration_max_seconds'] * 1e3:.1f} ms; "
              f"steps {m['ppd_engine_steps_total']:.0f}; rejected before the engine {m['ppd_http_rejected_total']:.0f}; "
              f"PPD accepted/step {m.get('ppd_spec_decode_num_accepted_tokens_total', 0) / max(1, m.get('ppd_spec_decode_num_drafts_total', 0)) + 1:.2f}; "
              f"prefix cache {m['ppd_prefix_cache_hits_total']:.0f} of {m['ppd_prefix_cache_queries_total']:.0f} prompt "
              f"tokens, {m['ppd_prefix_cache_held_total']:.0f} held back, idle: {m['ppd_prefix_cache_slots']:.0f} slots "
              f"keep {m['ppd_prefix_cache_tokens']:.0f} entries")

        # SIGTERM with a wave of streams in flight: each still ends complete and right.
        wave = {}

        def last_wave(i):
            p = PROMPTS[i % len(PROMPTS)]
            try:
                wave[i] = stream_text(s.url, p, N) == ref[p]
            except Exception as e:  # noqa: BLE001 - collected and reported
                wave[i] = repr(e)

        waves = [threading.Thread(target=last_wave, args=(i,)) for i in range(8)]
        for t in waves:
            t.start()
        # SIGTERM once all 8 are in (running, queued, or already answered): a request
        # that arrives after it is refused with 503, as it should be, and is not the point.
        deadline = time.time() + 60
        while time.time() < deadline:
            m = s.metrics()
            if m["ppd_num_requests_running"] + m["ppd_num_requests_waiting"] + len(wave) >= 8:
                break
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        for t in waves:
            t.join(timeout=300)
        stopped = True
        assert s.proc.wait(timeout=120) == 0, s.log()[-3000:]
        assert all(v is True for v in wave.values()) and len(wave) == 8, sorted(wave.items())
        print(f"soak: SIGTERM with {len(wave)} streams in flight: all complete and equal to their references")
    finally:
        if not stopped:
            s.stop()


def test_overload_gets_429_at_once(tmp_path_factory):
    """More clients than slots + queue: the extra ones get 429 while the admitted
    ones are still decoding, not after a timeout."""
    s = start_server(tmp_path_factory, "-np", "2", "-c", "512", "--max-queue", "2", name="overload")
    try:
        results = []
        lock = threading.Lock()
        go = threading.Event()

        def one():
            go.wait()
            r = requests.post(s.url + "/v1/chat/completions", json=chat_body(LONG_PROMPT, 96, False), timeout=300)
            with lock:
                results.append((r.status_code, time.time(), r.headers.get("Retry-After")))

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        t_go = time.time()
        go.set()
        for t in threads:
            t.join(timeout=600)
        ok = sorted(t for st, t, _ in results if st == 200)
        busy = [(t, ra) for st, t, ra in results if st == 429]
        assert len(results) == 16 and len(ok) + len(busy) == 16, results
        assert 2 <= len(ok) <= 4 and len(busy) >= 12, results
        assert all(ra == "1" for _, ra in busy)
        # every refusal came back before the first admitted request had finished
        assert max(t for t, _ in busy) < ok[0], (busy, ok)
        print(f"\noverload: 16 clients, 2 slots + 2 queued: {len(ok)} answered, {len(busy)} got 429, the last "
              f"{max(t for t, _ in busy) - t_go:.3f} s after the start, the first answer {ok[0] - t_go:.3f} s")
    finally:
        assert s.stop() == 0, s.log()[-2000:]
