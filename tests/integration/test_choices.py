"""n choices and the per-response timings, through the official openai SDK
on the shared server: n = 4 with a seed gives, token for token, the four
single requests with seeds seed..seed+3; streamed chunks carry their
choice's index; usage counts the prompt once and every choice's tokens; the
timings object sits at the top level of the whole answer and of the last
chunk before [DONE], and its figures add up."""
import json
import socket
import time

import pytest
import requests

MSGS = [{"role": "user", "content": "Tell me a short fact about owls."}]


def timings(r):
    return r.to_dict()["timings"]


def choice_tokens(c):
    """A choice's text, finish and its tokens with their logprobs (dicts)."""
    return c.message.content, c.finish_reason, [e.model_dump() for e in c.logprobs.content]


def test_n_equals_single_requests(client, model_id):
    kw = dict(temperature=0.9, top_p=0.95, max_tokens=16, logprobs=True, top_logprobs=1)
    r = client.chat.completions.create(model=model_id, messages=MSGS, n=4, seed=11, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    singles = [client.chat.completions.create(model=model_id, messages=MSGS, seed=11 + i, **kw) for i in range(4)]
    for c, s in zip(r.choices, singles):
        assert choice_tokens(c) == choice_tokens(s.choices[0])
    assert len({c.message.content for c in r.choices}) > 1      # the seeds differ, so do the texts
    assert r.usage.prompt_tokens == singles[0].usage.prompt_tokens
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    t = timings(r)
    assert t["predicted_n"] == r.usage.completion_tokens
    assert t["prompt_n"] == 4 * r.usage.prompt_tokens             # each choice prefills the prompt
    assert t["ppd_steps"] == sum(timings(s)["ppd_steps"] for s in singles)
    assert t["ppd_accepted"] == sum(timings(s)["ppd_accepted"] for s in singles)

    # streamed: each chunk names its choice; per index the same text and finish
    chunks = list(client.chat.completions.create(model=model_id, messages=MSGS, n=4, seed=11, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    body, usage_chunk = chunks[:-1], chunks[-1]
    assert all(len(c.choices) == 1 for c in body)
    assert [c.choices[0].index for c in body[:4]] == [0, 1, 2, 3]
    assert all(c.choices[0].delta.role == "assistant" for c in body[:4])
    for i, (c, s) in enumerate(zip(r.choices, singles)):
        mine = [ch.choices[0] for ch in body if ch.choices[0].index == i]
        assert "".join(x.delta.content or "" for x in mine) == c.message.content
        assert [x.finish_reason for x in mine if x.finish_reason] == [c.finish_reason]
        assert [e.model_dump() for x in mine if x.logprobs for e in x.logprobs.content] == choice_tokens(c)[2]
    assert usage_chunk.choices == []
    # the same counts; the prefix cache may now serve what the first request computed
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens, usage_chunk.usage.total_tokens) == \
        (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens)


def test_n_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="The sky is", n=3, temperature=0, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) == 1                 # greedy: every choice alike
    one = client.completions.create(model=model_id, prompt="The sky is", temperature=0, max_tokens=6)
    assert r.choices[0].text == one.choices[0].text
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert r.usage.prompt_tokens == one.usage.prompt_tokens


def check_timings(t, usage, n=1):
    assert set(t) == {"prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n",
                      "predicted_ms", "predicted_per_token_ms", "predicted_per_second", "cached_prompt_tokens",
                      "ppd_steps", "ppd_drafted", "ppd_accepted", "ppd_mean_accepted_per_step"}
    assert all(v >= 0 for v in t.values())
    assert t["prompt_n"] == n * usage["prompt_tokens"] and t["predicted_n"] == usage["completion_tokens"]
    # the prefix cache may serve all but the last prompt token of each choice
    assert t["cached_prompt_tokens"] <= t["prompt_n"] - n
    for phase in ("prompt", "predicted"):
        if t[phase + "_ms"] > 0:
            assert abs(t[phase + "_per_token_ms"] * t[phase + "_n"] - t[phase + "_ms"]) <= 1e-6 * t[phase + "_ms"]
            assert abs(t[phase + "_per_second"] * t[phase + "_ms"] - 1e3 * t[phase + "_n"]) <= 1e-6 * t[phase + "_n"] * 1e3
    assert t["ppd_accepted"] <= t["ppd_drafted"]
    if t["ppd_steps"]:
        assert t["ppd_mean_accepted_per_step"] == t["ppd_accepted"] / t["ppd_steps"]
        assert t["ppd_steps"] < t["predicted_n"]                  # the first token comes from the prefill
    else:
        assert t["ppd_mean_accepted_per_step"] == 0


def sse_events(server, path, body):
    raw = requests.post(server.url + path, json={**body, "stream": True}, timeout=120).text
    datas = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def test_timings_where_and_what(server, model_id):
    body = {"model": model_id, "messages": MSGS, "temperature": 0, "max_tokens": 24}
    r = requests.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
    check_timings(r["timings"], r["usage"])
    plain = requests.post(server.url + "/v1/chat/completions", json={**body, "ppd": False}, timeout=120).json()
    check_timings(plain["timings"], plain["usage"])
    assert plain["timings"]["ppd_steps"] == plain["timings"]["ppd_drafted"] == 0
    assert r["timings"]["ppd_steps"] > 0                          # the shared server decodes with PPD
    # streamed: only the last chunk before [DONE] has them, with or without the usage chunk
    for include_usage, path, b in [(True, "/v1/chat/completions", body), (False, "/v1/chat/completions", body),
                                   (False, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "n": 2})]:
        evs = sse_events(server, path, {**b, "stream_options": {"include_usage": include_usage}})
        assert ["timings" in e for e in evs] == [False] * (len(evs) - 1) + [True]
        last = evs[-1]
        if include_usage:
            assert last["choices"] == [] and "usage" in last
            check_timings(last["timings"], last["usage"])
        else:
            assert last["choices"][0]["finish_reason"] is not None
            n = b.get("n", 1)
            assert last["timings"]["prompt_n"] % n == 0 and last["timings"]["predicted_n"] > 0


def test_n_stream_disconnect_cancels_every_choice(server):
    m0 = server.metrics()
    body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 400,
                       "temperature": 0.8, "ignore_eos": True, "stream": True, "n": 3}).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 9:   # the role chunks and a few steps of text
        got += s.recv(65536)
    s.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        m = server.metrics()
        if m["ppd_request_cancelled_total"] == m0["ppd_request_cancelled_total"] + 3 and \
                m["ppd_num_requests_running"] == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the three choices were not all cancelled")
    assert m["ppd_kv_cache_usage_perc"] == 0
    # the server goes on serving
    r = requests.post(server.url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2, "n": 2}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
