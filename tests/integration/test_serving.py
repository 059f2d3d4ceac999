"""Serving behaviour: concurrent streams equal their single-stream output,
a client that disconnects frees its slot (seen in /metrics), the metrics
text, and SIGTERM draining in-flight requests before exit 0."""
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import PPD_BIN, missing_tool, start_server

TOPICS = ["the moon", "rivers", "bread", "chess", "owls", "glass", "trains", "tea",
          "volcanoes", "violins", "maps", "bees", "snow", "bridges", "clocks", "salt"]


def chat_text(client, model_id, prompt, n, stream=False):
    msgs = [{"role": "user", "content": prompt}]
    if not stream:
        r = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=n)
        return r.choices[0].message.content
    chunks = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=n, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_concurrent_streams_equal_single(client, model_id):
    prompts = [f"Tell me one fact about {t}." for t in TOPICS]
    alone = [chat_text(client, model_id, p, 16) for p in prompts]
    got = [None] * len(prompts)
    errors = []

    def run(i):
        try:
            got[i] = chat_text(client, model_id, prompts[i], 16, stream=True)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i, p in enumerate(prompts):
        assert got[i] == alone[i], p


def wait_for(pred, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_stream_disconnect_frees_slot(server, model_id):
    before = server.metrics()["ppd_request_cancelled_total"]
    r = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=60,
                      json={"model": model_id, "messages": [{"role": "user", "content": "Write a very long story."}],
                            "stream": True, "max_tokens": 900, "temperature": 0})
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: "):
            got += 1
            if got == 4:
                break
    assert server.metrics()["ppd_num_requests_running"] >= 1
    r.close()
    assert wait_for(lambda: server.metrics()["ppd_request_cancelled_total"] == before + 1)
    assert wait_for(lambda: server.metrics()["ppd_num_requests_running"] == 0)
    assert server.metrics()["ppd_kv_cache_usage_perc"] == 0


def test_nonstream_disconnect_frees_slot(server, model_id):
    before = server.metrics()["ppd_request_cancelled_total"]
    body = ('{"messages":[{"role":"user","content":"Write a very long story."}],"max_tokens":900,'
            '"temperature":0}').encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert wait_for(lambda: server.metrics()["ppd_num_requests_running"] >= 1)
    s.close()
    assert wait_for(lambda: server.metrics()["ppd_request_cancelled_total"] == before + 1)
    assert wait_for(lambda: server.metrics()["ppd_num_requests_running"] == 0)


def test_metrics_text(server, client, model_id):
    client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    m = server.metrics()
    for name in ["ppd_num_requests_running", "ppd_num_requests_waiting", "ppd_kv_cache_usage_perc",
                 'ppd_request_success_total{finished_reason="stop"}',
                 'ppd_request_success_total{finished_reason="length"}',
                 "ppd_prompt_tokens_total", "ppd_generation_tokens_total",
                 "ppd_time_to_first_token_seconds_count", "ppd_inter_token_latency_seconds_count",
                 "ppd_e2e_request_latency_seconds_count", "ppd_request_queue_time_seconds_count",
                 "ppd_step_duration_seconds_count", "ppd_step_duration_max_seconds", "ppd_spec_decode_num_drafts_total",
                 "ppd_spec_decode_num_draft_tokens_total", "ppd_spec_decode_num_accepted_tokens_total",
                 "ppd_process_resident_memory_bytes"]:
        assert name in m, name
    assert m["ppd_generation_tokens_total"] >= 3
    ppd_on = requests.get(server.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]["enabled"]
    assert ppd_on or m["ppd_spec_decode_num_drafts_total"] == 0   # no drafts without an adapter
    assert m['ppd_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["ppd_time_to_first_token_seconds_count"]
    for line in r.text.splitlines():
        assert line.startswith("# HELP ppd_") or line.startswith("# TYPE ppd_") or line.startswith("ppd_")
    # the CPU kernels' path, as `ppd --version` names it
    version = subprocess.run([PPD_BIN, "--version"], capture_output=True, text=True, timeout=30).stdout
    isa = re.search(r"features: cpu=(\w+) \(this CPU has up to (\w+)\)", version)
    assert isa, version
    assert f'ppd_cpu_info{{isa="{isa[1]}",detected="{isa[2]}"}} 1' in r.text.splitlines()


def test_promtool_check_metrics(server):
    if shutil.which("promtool") is None:
        missing_tool("promtool", "Debian package prometheus; scripts/install-deps.sh")
    text = requests.get(server.url + "/metrics", timeout=10).text
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_sigterm_drains_then_exits_0(tmp_path_factory):
    # A drain timeout far past the wait below: the server must notice on its own
    # that the last response has gone out (it once waited for the timeout).
    s = start_server(tmp_path_factory, "-np", "2", "-c", "512", "--drain-timeout", "3600", name="drain")
    result = {}

    def run():
        r = requests.post(s.url + "/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "Describe a forest."}], "max_tokens": 40,
                                "temperature": 0})
        result["status"] = r.status_code
        result["body"] = r.json()

    t = threading.Thread(target=run)
    t.start()
    assert wait_for(lambda: s.metrics()["ppd_num_requests_running"] >= 1)
    s.proc.terminate()
    t.join(timeout=120)
    assert s.proc.wait(timeout=60) == 0, s.log()
    assert result["status"] == 200, result
    assert result["body"]["usage"]["completion_tokens"] > 0
    assert "drained" in s.log()


def test_every_metric_deploy_names_is_exported_ppd_on_and_off(tmp_path_factory):
    """The dashboard, the alert rules and the autoscaler read these series: each
    must exist whether PPD is on or off, so a panel shows plain decoding as
    zeros rather than "no data"."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "deploy")
    wanted = set()
    for d, _, files in os.walk(root):
        for f in files:
            wanted |= set(re.findall(r"\bppd_[a-z0-9_]+", open(os.path.join(d, f), errors="replace").read()))
    assert "ppd_tree_budget" in wanted and "ppd_spec_decode_num_accepted_tokens_per_pos_total" in wanted
    for args, ppd_on in ((["--no-ppd"], False), ([], True)):
        s = start_server(tmp_path_factory, "-np", "2", "-c", "512", *args, name="names")
        try:
            text = requests.get(s.url + "/metrics", timeout=10).text
            on = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["ppd"]["enabled"]
            assert on == ppd_on
            exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ppd_")}
            assert not sorted(wanted - exported), (args, sorted(wanted - exported))
            budget = re.findall(r'^ppd_tree_budget\{batch_size="(\d)"\} (-?\d+)$', text, re.M)
            assert [b for b, _ in budget] == ["1", "2"]
            assert all((int(v) > 0) == ppd_on for _, v in budget), budget
        finally:
            assert s.stop() == 0
