"""PPD through the server: a `ppd serve` with an untrained adapter (made here
with `ppd adapter init`) gives exactly the text, finish reason and usage of
plain decoding, streamed and not, greedy and seeded, alone and concurrently,
with stop strings and max_tokens; the reference is the same server with the
request's "ppd": false (and, for greedy, `ppd generate --no-ppd`).  The
spec-decode metrics parse with promtool and add up.  The PPD settings are
read from the config file (with the ppd.* aliases), the environment and
flags, and the auto tree shrinks so that every slot's tree fits a step."""
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import MODEL, PPD_BIN, missing_tool, ppd_generate, start_server

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves.",
           "List three prime numbers and say why each is prime.", "Hi"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "x.ppd.gguf"
    subprocess.run([PPD_BIN, "adapter", "init", "-m", MODEL, "-o", str(path)], check=True, capture_output=True)
    return str(path)


@pytest.fixture(scope="module")
def ppd_server(tmp_path_factory, adapter):
    s = start_server(tmp_path_factory, "-np", "4", "-c", "1024", "--ppd", adapter, name="ppd")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def ppd_client(ppd_server):
    from openai import OpenAI

    return OpenAI(base_url=ppd_server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


_model_ids = {}


def chat(client, prompt, stream=False, ppd=True, **kw):
    """(text, finish_reason, (prompt_tokens, completion_tokens)) of one chat completion;
    ppd=False sends the extension field "ppd": false."""
    if id(client) not in _model_ids:
        _model_ids[id(client)] = client.models.list().data[0].id
    model = _model_ids[id(client)]
    msgs = [{"role": "user", "content": prompt}]
    extra = {} if ppd else {"extra_body": {"ppd": False}}
    if not stream:
        r = client.chat.completions.create(model=model, messages=msgs, **kw, **extra)
        return r.choices[0].message.content, r.choices[0].finish_reason, (r.usage.prompt_tokens,
                                                                          r.usage.completion_tokens)
    chunks = list(client.chat.completions.create(model=model, messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}, **kw, **extra))
    body, usage = chunks[:-1], chunks[-1].usage
    text = "".join(c.choices[0].delta.content or "" for c in body)
    return text, body[-1].choices[0].finish_reason, (usage.prompt_tokens, usage.completion_tokens)


def spec(server):
    m = server.metrics()
    return {k: v for k, v in m.items() if k.startswith("ppd_spec_decode")}


def test_models_says_ppd_is_on(ppd_server, adapter):
    meta = requests.get(ppd_server.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]
    assert meta["enabled"] is True
    assert meta["adapter"] == adapter
    assert meta["n_prompt"] == 3 and meta["topk"] == 10
    assert meta["tree"] == "auto" and meta["tree_size"] == 20 and meta["tree_rows"] > 3
    assert meta["accept"] == "exact"
    assert "PPD: on" in ppd_server.log()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_greedy_equals_plain(ppd_server, ppd_client, prompt, stream):
    before = spec(ppd_server)
    got = chat(ppd_client, prompt, stream=stream, temperature=0, max_tokens=40)
    mid = spec(ppd_server)
    want = chat(ppd_client, prompt, stream=stream, ppd=False, temperature=0, max_tokens=40)
    after = spec(ppd_server)
    assert got == want
    ref = ppd_generate(prompt, 40)
    assert got == (ref["text"], ref["finish_reason"], (ref["n_prompt"], ref["n_gen"]))
    # the first request decoded with PPD, the opted-out one did not
    assert mid["ppd_spec_decode_num_requests_total"] == before["ppd_spec_decode_num_requests_total"] + 1
    assert mid["ppd_spec_decode_num_drafts_total"] > before["ppd_spec_decode_num_drafts_total"]
    assert after["ppd_spec_decode_num_requests_total"] == mid["ppd_spec_decode_num_requests_total"]
    assert after["ppd_spec_decode_num_drafts_total"] == mid["ppd_spec_decode_num_drafts_total"]


@pytest.mark.parametrize("stream,prompt,seed", [(False, PROMPTS[0], 7), (True, PROMPTS[2], 12345)])
def test_seeded_sampling_equals_plain(ppd_client, stream, prompt, seed):
    kw = dict(temperature=0.7, top_p=0.95, seed=seed, max_tokens=32)
    got = chat(ppd_client, prompt, stream=stream, **kw)
    want = chat(ppd_client, prompt, stream=stream, ppd=False, **kw)
    assert got == want


def test_concurrent_streams_equal_plain(ppd_client):
    cases = [(p, dict(temperature=0, max_tokens=24)) for p in PROMPTS] + \
            [(p, dict(temperature=0.7, seed=100 + i, max_tokens=24)) for i, p in enumerate(PROMPTS[:2])]
    want = [chat(ppd_client, p, ppd=False, **kw) for p, kw in cases]
    got = [None] * len(cases)

    def run(i):
        got[i] = chat(ppd_client, cases[i][0], stream=True, **cases[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert got == want


def test_stop_and_max_tokens_equal_plain(ppd_client):
    full, _, _ = chat(ppd_client, PROMPTS[2], ppd=False, temperature=0, max_tokens=40)
    words = full.split()
    assert len(words) > 8
    for stream in (False, True):
        for stop in [words[3], [words[6] + " " + words[7], "zzz"]]:
            got = chat(ppd_client, PROMPTS[2], stream=stream, temperature=0, max_tokens=40, stop=stop)
            want = chat(ppd_client, PROMPTS[2], stream=stream, ppd=False, temperature=0, max_tokens=40, stop=stop)
            assert got == want and got[1] == "stop", (stop, got, want)
        for n in (1, 2, 5):
            got = chat(ppd_client, PROMPTS[2], stream=stream, temperature=0, max_tokens=n)
            want = chat(ppd_client, PROMPTS[2], stream=stream, ppd=False, temperature=0, max_tokens=n)
            assert got == want and got[2][1] == n, (n, got, want)


def test_penalties_decode_plainly(ppd_server, ppd_client):
    before = spec(ppd_server)["ppd_spec_decode_num_requests_total"]
    chat(ppd_client, PROMPTS[0], temperature=0, max_tokens=8, presence_penalty=0.5)
    assert spec(ppd_server)["ppd_spec_decode_num_requests_total"] == before


def test_disconnect_mid_stream_frees_the_slot(ppd_server):
    m0 = ppd_server.metrics()
    body = ('{"messages":[{"role":"user","content":"Write a very long story."}],"max_tokens":600,'
            '"temperature":0,"ignore_eos":true,"stream":true}').encode()
    s = socket.create_connection(("127.0.0.1", ppd_server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 4:   # a few PPD steps' chunks
        got += s.recv(65536)
    s.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        m = ppd_server.metrics()
        if m["ppd_request_cancelled_total"] == m0["ppd_request_cancelled_total"] + 1 and \
                m["ppd_num_requests_running"] == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the cancelled PPD request did not free its slot")
    assert m["ppd_kv_cache_usage_perc"] == 0


def test_metrics_add_up(ppd_server, ppd_client):
    chat(ppd_client, PROMPTS[1], temperature=0, max_tokens=24)
    text = requests.get(ppd_server.url + "/metrics", timeout=10).text
    if shutil.which("promtool") is None:
        missing_tool("promtool", "Debian package prometheus; scripts/install-deps.sh")
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    m = spec(ppd_server)
    drafts = m["ppd_spec_decode_num_drafts_total"]
    accepted = m["ppd_spec_decode_num_accepted_tokens_total"]
    emitted = m["ppd_spec_decode_num_emitted_tokens_total"]
    assert m["ppd_spec_decode_enabled"] == 1
    assert drafts > 0 and m["ppd_spec_decode_num_requests_total"] > 0
    pos = [m[f'ppd_spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}}'] for i in (1, 2, 3)]
    assert sum(pos) == accepted
    assert pos[0] >= pos[1] >= pos[2]
    assert accepted <= m["ppd_spec_decode_num_draft_tokens_total"] <= 3 * drafts
    assert emitted - drafts <= accepted <= emitted - drafts + m["ppd_spec_decode_num_requests_total"]
    buckets = [m[f'ppd_spec_decode_accepted_length_bucket{{le="{a}"}}'] for a in (1, 2, 3, 4)]
    assert buckets == sorted(buckets) and buckets[-1] == drafts
    assert m['ppd_spec_decode_accepted_length_bucket{le="+Inf"}'] == drafts
    assert m["ppd_spec_decode_accepted_length_count"] == drafts
    assert m["ppd_spec_decode_accepted_length_sum"] == emitted
    per_len = [buckets[0]] + [buckets[a] - buckets[a - 1] for a in (1, 2, 3)]
    assert sum((a + 1) * n for a, n in enumerate(per_len)) == emitted


def test_settings_file_env_flag(tmp_path_factory, adapter, monkeypatch):
    conf = tmp_path_factory.mktemp("ppdconf") / "ppd.conf"
    conf.write_text(f'ppd.adapter = "{adapter}"\nppd.tree-size = 12\nppd.accept = exact\n')
    monkeypatch.setenv("PPD_PPD_ACCEPT", "typical")          # env beats the file
    s = start_server(tmp_path_factory, "--config", str(conf), "-np", "2", "-c", "256", "--tree-size", "9",
                     name="ppdconf")
    try:
        meta = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]
        assert meta["enabled"] and meta["adapter"] == adapter
        assert meta["tree_size"] == 9                         # the flag beats the file
        assert meta["accept"] == "typical"
    finally:
        assert s.stop() == 0
    monkeypatch.delenv("PPD_PPD_ACCEPT")
    # --no-ppd and --ppd none turn it off
    for args in (["--no-ppd"], ["--ppd", "none"]):
        s = start_server(tmp_path_factory, "--config", str(conf), "-np", "1", "-c", "256", *args, name="ppdoff")
        try:
            meta = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]
            assert meta == {"enabled": False}
            assert s.metrics()["ppd_spec_decode_enabled"] == 0
        finally:
            assert s.stop() == 0


def test_tree_shrinks_to_fit_the_batch(tmp_path_factory, adapter):
    # 16 slots x 24 rows do not fit 256 rows per step: the auto tree is made smaller
    s = start_server(tmp_path_factory, "-np", "16", "-c", "256", "--ppd", adapter, name="ppdfit")
    try:
        meta = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]
        assert meta["enabled"] and meta["tree_size"] < 20 and 16 * meta["tree_rows"] <= 256
        assert "tree budget lowered" in s.log()
    finally:
        assert s.stop() == 0
    # one slot whose tree is wider than the whole step (L=60: 64 rows > -b 16) is
    # shrunk too, not refused
    s = start_server(tmp_path_factory, "-np", "1", "-b", "16", "-c", "256", "--ppd", adapter, "--tree-size", "60",
                     name="ppdfit1")
    try:
        meta = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]
        assert meta["enabled"] and meta["tree_size"] < 60 and meta["tree_rows"] <= 16, meta
    finally:
        assert s.stop() == 0
    # a named adapter that cannot fit at all is an error naming the way out
    p = subprocess.run([PPD_BIN, "serve", "-m", MODEL, "--port", "0", "-t", "1", "-np", "16", "-b", "64", "-c", "256",
                        "--ppd", adapter], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "--batch-size" in p.stderr
