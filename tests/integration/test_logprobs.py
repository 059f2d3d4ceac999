"""Logprobs through the official openai SDK, on the shared server (which
decodes with the committed PPD adapter next to the model): chat
(logprobs + top_logprobs) and completions (logprobs, echo with the prompt's
logprobs), streamed and not, greedy and seeded.  The same request with the
extension "ppd": false decodes plainly: its logprobs must equal PPD's bit for
bit (JSON numbers written with every digit of the float), and the PPD run must
really have accepted guesses (timings.ppd_accepted > 0) for that to mean
something."""
import math
from types import SimpleNamespace

import pytest

PROMPT = "Name the planets of the solar system in order, one per line."
EOG_TEXTS = ("<|im_end|>", "<|endoftext|>")


def timings(r):
    return r.to_dict()["timings"]


def counts(usage):
    """The usage's token counts.  Its prompt_tokens_details.cached_tokens is left out: how
    much of the prompt the prefix cache served depends on the requests before, not on this
    output."""
    return SimpleNamespace(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens)


def chat(client, model_id, ppd=True, stream=False, **kw):
    """(text, finish_reason, logprobs content as dicts, token counts, timings) of one chat completion."""
    msgs = [{"role": "user", "content": PROMPT}]
    extra = {} if ppd else {"extra_body": {"ppd": False}}
    if not stream:
        r = client.chat.completions.create(model=model_id, messages=msgs, **kw, **extra)
        c = r.choices[0]
        content = [e.model_dump() for e in c.logprobs.content] if c.logprobs else None
        return c.message.content, c.finish_reason, content, counts(r.usage), timings(r)
    chunks = list(client.chat.completions.create(model=model_id, messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}, **kw, **extra))
    body = [c for c in chunks if c.choices]
    content = [e.model_dump() for c in body if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    return text, body[-1].choices[0].finish_reason, content, counts(chunks[-1].usage), timings(chunks[-1])


def check_chat_entries(text, finish, content, usage, n_top, greedy):
    """One entry per delivered token; the alternatives sorted, at most probability 1 in
    all; the chosen token's logprob is its own entry among them (or below them all);
    greedy tokens are the most likely; the tokens' bytes spell the text."""
    assert len(content) == usage.completion_tokens
    for e in content:
        top = e["top_logprobs"]
        assert len(top) == n_top
        assert e["logprob"] <= 0 and all(t["logprob"] <= 0 for t in top)
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        assert e["bytes"] == list(e["token"].encode()) or "\ufffd" in e["token"]
        same = [t for t in top if t["token"] == e["token"]]
        if same:
            assert same[0]["logprob"] == e["logprob"]
        else:
            assert e["logprob"] <= top[-1]["logprob"]
        if greedy:
            assert top[0]["token"] == e["token"] and top[0]["logprob"] == e["logprob"]
    spelled = content[:-1] if finish == "stop" and content[-1]["token"] in EOG_TEXTS else content
    assert b"".join(bytes(e["bytes"]) for e in spelled) == text.encode()


def test_chat_greedy_ppd_equals_plain(client, model_id):
    kw = dict(temperature=0, max_tokens=40, logprobs=True, top_logprobs=5)
    got = chat(client, model_id, **kw)
    want = chat(client, model_id, ppd=False, **kw)
    assert got[4]["ppd_accepted"] > 0      # PPD emitted tokens from accepted guesses
    assert want[4]["ppd_steps"] == 0
    assert got[:4] == want[:4]
    check_chat_entries(*got[:4], n_top=5, greedy=True)
    # streamed: the same entries, chunk by chunk
    streamed = chat(client, model_id, stream=True, **kw)
    assert streamed[:4] == got[:4]


def test_chat_seeded_ppd_equals_plain(client, model_id):
    kw = dict(temperature=0.8, top_p=0.95, seed=5, max_tokens=32, logprobs=True, top_logprobs=3)
    got = chat(client, model_id, **kw)
    want = chat(client, model_id, ppd=False, **kw)
    assert got[:4] == want[:4]
    check_chat_entries(*got[:4], n_top=3, greedy=False)
    # logprobs are the raw distribution: the sampling settings do not change them
    greedy = chat(client, model_id, temperature=0, max_tokens=1, logprobs=True, top_logprobs=3)
    assert greedy[2][0]["top_logprobs"] == got[2][0]["top_logprobs"]


def test_chat_without_logprobs_has_none(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                       logprobs=False)
    assert r.choices[0].logprobs is None
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                       logprobs=True)
    assert [len(e.top_logprobs) for e in r.choices[0].logprobs.content] == [0] * r.usage.completion_tokens


def completion(client, model_id, prompt, ppd=True, stream=False, **kw):
    """(text, finish_reason, logprobs as a dict of lists, token counts) of one completion."""
    extra = {} if ppd else {"extra_body": {"ppd": False}}
    if not stream:
        r = client.completions.create(model=model_id, prompt=prompt, **kw, **extra)
        c = r.choices[0]
        return c.text, c.finish_reason, c.logprobs.model_dump() if c.logprobs else None, counts(r.usage)
    chunks = list(client.completions.create(model=model_id, prompt=prompt, stream=True,
                                            stream_options={"include_usage": True}, **kw, **extra))
    body = [c for c in chunks if c.choices]
    lp = {k: [] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    for c in body:
        if c.choices[0].logprobs:
            for k, v in c.choices[0].logprobs.model_dump().items():
                lp[k] += v
    return "".join(c.choices[0].text for c in body), body[-1].choices[0].finish_reason, lp, counts(chunks[-1].usage)


def test_completion_echo_logprobs(client, model_id):
    prompt = "The three primary colors are"
    kw = dict(temperature=0, max_tokens=16, logprobs=3, echo=True)
    text, finish, lp, usage = completion(client, model_id, prompt, **kw)
    assert completion(client, model_id, prompt, ppd=False, **kw) == (text, finish, lp, usage)
    assert completion(client, model_id, prompt, stream=True, **kw) == (text, finish, lp, usage)
    plain = completion(client, model_id, prompt, temperature=0, max_tokens=16)
    assert text == prompt + plain[0] and plain[2] is None
    toks = lp["tokens"]
    assert len(toks) == usage.prompt_tokens + usage.completion_tokens
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == len(toks)
    # the first prompt token has no distribution to come from
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"] == [len("".join(toks[:i])) for i in range(len(toks))]
    spelled = toks[:-1] if finish == "stop" and toks[-1] in EOG_TEXTS else toks
    assert "".join(spelled) == text
    for i in range(1, len(toks)):
        top = lp["top_logprobs"][i]
        assert toks[i] in top and top[toks[i]] == lp["token_logprobs"][i]
        assert len(top) in (3, 4) and all(v <= 0 for v in top.values())
        if i >= usage.prompt_tokens:   # greedy: the chosen token is the most likely
            assert lp["token_logprobs"][i] == max(top.values())
    # the prompt is text the model did not write: somewhere it was not the favourite
    assert any(lp["token_logprobs"][i] < max(lp["top_logprobs"][i].values()) for i in range(1, usage.prompt_tokens))


def test_completion_logprobs_zero_lists_the_chosen_token(client, model_id):
    text, _, lp, usage = completion(client, model_id, "Once upon a time", temperature=0.7, seed=2, max_tokens=8,
                                    logprobs=0)
    assert len(lp["tokens"]) == usage.completion_tokens
    assert all(list(top) == [tok] for tok, top in zip(lp["tokens"], lp["top_logprobs"]))
    assert lp["text_offset"][0] == 0


@pytest.mark.parametrize("body,param", [({"logprobs": 6}, "logprobs"), ({"logprobs": True}, "logprobs")])
def test_completion_logprobs_bounds(client, model_id, body, param):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_id, prompt="Hi", max_tokens=1, extra_body=body)
    assert e.value.body["param"] == param
