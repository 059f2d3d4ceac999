"""Chat and text completions through the official openai SDK: greedy output
equals `ppd generate`, streamed equals non-streamed, usage counts, stop
strings (also split across tokens), max_tokens, seeded sampling."""
import json

import pytest
import requests

from conftest import ppd_generate

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves."]


def stream_chat(client, model_id, **kw):
    chunks = list(client.chat.completions.create(model=model_id, stream=True, **kw))
    return chunks


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_greedy_equals_generate(client, model_id, prompt):
    ref = ppd_generate(prompt, 48)
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                       temperature=0, max_tokens=48)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model_id
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == ref["text"]
    assert c.finish_reason == ref["finish_reason"]
    assert r.usage.prompt_tokens == ref["n_prompt"]
    assert r.usage.completion_tokens == ref["n_gen"]
    assert r.usage.total_tokens == ref["n_prompt"] + ref["n_gen"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_stream_equals_generate(client, model_id, prompt):
    ref = ppd_generate(prompt, 48)
    chunks = stream_chat(client, model_id, messages=[{"role": "user", "content": prompt}], temperature=0,
                         max_tokens=48, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    # usage chunk last, with no choices; every other chunk has usage null
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    body = chunks[:-1]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == ref["text"]
    finishes = [c.choices[0].finish_reason for c in body]
    assert finishes[-1] == ref["finish_reason"] and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage.prompt_tokens == ref["n_prompt"]
    assert chunks[-1].usage.completion_tokens == ref["n_gen"]


def test_stream_wire_format(server, model_id):
    r = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=60,
                      json={"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
                            "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Accel-Buffering"] == "no"
    raw = r.content.decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ")
        obj = json.loads(e[6:])
        assert "usage" not in obj   # only with include_usage
    # No usage chunk without stream_options.include_usage.
    assert all(json.loads(e[6:])["choices"] for e in events[:-2])


def test_completions_equals_generate(client, model_id):
    prompt = "The three primary colors are"
    ref = ppd_generate(prompt, 24, chat=False)
    r = client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=24)
    assert r.object == "text_completion"
    assert r.choices[0].text == ref["text"]
    assert r.choices[0].finish_reason == ref["finish_reason"]
    assert r.usage.prompt_tokens == ref["n_prompt"]
    assert r.usage.completion_tokens == ref["n_gen"]
    chunks = list(client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref["text"]
    assert chunks[-1].usage.completion_tokens == ref["n_gen"]


def test_completions_prompt_forms(client, model_id):
    a = client.completions.create(model=model_id, prompt=["Once upon a time"], temperature=0, max_tokens=8)
    b = client.completions.create(model=model_id, prompt="Once upon a time", temperature=0, max_tokens=8)
    assert a.choices[0].text == b.choices[0].text


def test_max_tokens(client, model_id):
    prompt = PROMPTS[1]
    ref = ppd_generate(prompt, 5)
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, **{field: 5})
        assert r.usage.completion_tokens == 5
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.content == ref["text"]


def _pieces(client, model_id, prompt, n):
    """Per-token text pieces of the greedy answer (no stop strings: one chunk per token)."""
    chunks = stream_chat(client, model_id, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=n)
    return [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens(client, model_id, stream):
    prompt = "Write a short paragraph about the history of Paris."
    pieces = _pieces(client, model_id, prompt, 40)
    full = "".join(pieces)
    # A stop string made of the end of one token and the start of the next.
    i = next(k for k in range(3, len(pieces) - 1) if len(pieces[k]) >= 2 and len(pieces[k + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    at = full.find(stop)
    want = full[:at]
    end = at + len(stop)
    # Tokens delivered: up to and including the one that completed the stop string.
    n_tok, acc = 0, 0
    while acc < end:
        acc += len(pieces[n_tok])
        n_tok += 1
    kw = dict(model=model_id, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=40,
              stop=["never-appears", stop])
    if stream:
        chunks = stream_chat(client, model_id, stream_options={"include_usage": True},
                             **{k: v for k, v in kw.items() if k != "model"})
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        fin = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
    else:
        r = client.chat.completions.create(**kw)
        text, fin, usage = r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    assert text == want
    assert fin == "stop"
    assert usage.completion_tokens == n_tok


def test_stop_string_single(client, model_id):
    prompt = PROMPTS[0]
    full = ppd_generate(prompt, 48)["text"]
    stop = full.split()[2]
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                       temperature=0, max_tokens=48, stop=stop)
    assert r.choices[0].message.content == full[:full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seeded_sampling_equals_generate(client, model_id):
    prompt = PROMPTS[1]
    ref = ppd_generate(prompt, 32, extra=("--temp", "0.8", "--seed", "42"))
    outs = []
    for _ in range(2):
        r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                           temperature=0.8, seed=42, max_tokens=32)
        outs.append(r.choices[0].message.content)
    assert outs[0] == outs[1] == ref["text"]


def test_system_message_and_content_parts(client, model_id):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "color."}]}]
    a = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=8)
    msgs[1]["content"] = "Name a color."
    b = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_models_and_health(server, client, model_id):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert requests.get(server.url + "/models", timeout=10).json()["data"][0]["id"] == model_id
    h = requests.get(server.url + "/health", timeout=10)
    assert h.status_code == 200 and h.json() == {"status": "ok"}
    # the model can be named by its path too
    r = client.completions.create(model=model_id, prompt="Hi", max_tokens=1)
    assert r.model == model_id
