"""The prefix cache through the official openai SDK: a chat's second turn
(the first turn's messages and answer, then a new question) reuses the first
turn's KV entries and answers exactly as a server without the cache does,
greedy and seeded, with and without PPD; the counters add up; nothing stays
busy once idle; clients arriving together with one system prompt compute it
once; usage reports the cached tokens; more conversations than slots find
their earlier turns in the block store; bad values of the setting are refused
by name."""
import os
import subprocess
import threading

import pytest

from conftest import PPD_BIN, TIME_FACTOR, start_server

SYSTEM = ("You are a careful assistant for a small bookshop. Answer in one or two sentences, name the section "
          "of the shop where a customer finds what they ask for, and never invent opening hours or prices. "
          "The sections are: fiction, history, science, children's books, travel, cooking and poetry.")
QUESTIONS = [("Where do I find a book about the Roman empire?", "And one about baking bread?"),
             ("I want a novel for a long train ride.", "Something for my five-year-old niece too?")]


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "2", "-c", "1024", "--prefix-cache", "off", name="cold")
    yield s
    assert s.stop() == 0, s.log()


def client_for(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120 * TIME_FACTOR)


def turn(client, messages, sampling, use_ppd):
    r = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, max_tokens=24, extra_body={"ppd": use_ppd},
                                       **sampling)
    return r.choices[0].message.content, r.usage.prompt_tokens, r.to_dict()["timings"]["cached_prompt_tokens"]


def conversation(client, q1, q2, sampling, use_ppd):
    m1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q1}]
    a1, n1, c1 = turn(client, m1, sampling, use_ppd)
    m2 = m1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
    a2, n2, c2 = turn(client, m2, sampling, use_ppd)
    return (a1, a2), (n1, n2), (c1, c2)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 11}], ids=["greedy", "seeded"])
@pytest.mark.parametrize("use_ppd", [True, False], ids=["ppd", "plain"])
def test_second_turn_reuses_first_and_equals_cold(server, cold, sampling, use_ppd):
    before = server.metrics()
    hot_c, cold_c = client_for(server), client_for(cold)
    n_prompt = n_cached = 0
    for q1, q2 in QUESTIONS:
        hot, n_hot, cached = conversation(hot_c, q1, q2, sampling, use_ppd)
        ref, n_ref, cached_ref = conversation(cold_c, q1, q2, sampling, use_ppd)
        assert hot == ref, (q1, hot, ref)
        assert n_hot == n_ref
        assert cached_ref == (0, 0)
        # the second turn finds at least the first turn's prompt; never the last token
        assert n_hot[0] <= cached[1] < n_hot[1], (n_hot, cached)
        n_prompt += sum(n_hot)
        n_cached += sum(cached)
    after = server.metrics()
    hits = after["ppd_prefix_cache_hits_total"] - before["ppd_prefix_cache_hits_total"]
    queries = after["ppd_prefix_cache_queries_total"] - before["ppd_prefix_cache_queries_total"]
    assert queries == n_prompt and hits == n_cached
    assert after["ppd_prefix_cache_enabled"] == 1
    m = cold.metrics()
    assert m["ppd_prefix_cache_enabled"] == 0
    assert m["ppd_prefix_cache_queries_total"] == m["ppd_prefix_cache_hits_total"] == m["ppd_prefix_cache_slots"] == 0


def test_counters_and_idle(server, client, model_id):
    before = server.metrics()
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Do you sell maps?"}]
    rs = [client.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, temperature=0) for _ in range(2)]
    after = server.metrics()
    n = rs[0].usage.prompt_tokens
    cached = [r.to_dict()["timings"]["cached_prompt_tokens"] for r in rs]
    assert after["ppd_prefix_cache_queries_total"] - before["ppd_prefix_cache_queries_total"] == 2 * n
    assert after["ppd_prefix_cache_hits_total"] - before["ppd_prefix_cache_hits_total"] == sum(cached)
    assert cached[1] == n - 1   # the same prompt again: all but its last token
    assert rs[0].choices[0].message.content == rs[1].choices[0].message.content
    # idle: no slot busy, every KV entry free; kept prefixes sit in free slots only
    assert after["ppd_num_requests_running"] == 0 and after["ppd_kv_cache_usage_perc"] == 0
    assert 1 <= after["ppd_prefix_cache_slots"] <= after["ppd_num_slots"]
    assert after["ppd_prefix_cache_tokens"] >= n - 1


def test_usage_cached_tokens(server, cold, client, model_id):
    """usage.prompt_tokens_details.cached_tokens, OpenAI's shape, parsed by the
    SDK: chat and completions, whole and streamed (the usage chunk)."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Do you sell atlases?"}]
    prompt = SYSTEM + " Q: Do you sell atlases? A:"
    calls = [lambda c, **kw: c.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, temperature=0, **kw),
             lambda c, **kw: c.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0, **kw)]
    for call in calls:
        first, again = call(client), call(client)
        for r in (first, again):
            assert r.usage.prompt_tokens_details.cached_tokens == r.to_dict()["timings"]["cached_prompt_tokens"]
        assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
        chunks = list(call(client, stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and usage.prompt_tokens == again.usage.prompt_tokens
        assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
        assert all(ch.usage is None for ch in chunks[:-1])
        assert call(client_for(cold)).usage.prompt_tokens_details.cached_tokens == 0


RULES = " ".join(f"Rule {i}: a customer who asks about shelf {i} is sent to aisle {i % 7} and told that the books "
                 f"there are sorted by the author's family name." for i in range(1, 25))


def test_clients_sharing_a_system_prompt(server, cold, model_id):
    """Eight clients at once, one long system prompt, four slots: the first
    prefills it, those arriving while it does are held back and copy it, the
    rest find it kept in a free slot; answers equal the cold server's."""
    qs = ["Where are the atlases?", "Do you have poetry?", "Where is cooking?", "Any travel guides?",
          "Where is history?", "Books for children?", "Where is science?", "Where is fiction?"]

    def ask_all(srv):
        c = client_for(srv)
        out = [None] * len(qs)

        def one(i):
            msgs = [{"role": "system", "content": RULES}, {"role": "user", "content": qs[i]}]
            out[i] = c.chat.completions.create(model=model_id, messages=msgs, max_tokens=8, temperature=0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(qs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    before = server.metrics()
    hot = ask_all(server)
    after = server.metrics()
    ref = ask_all(cold)
    assert [r.choices[0].message.content for r in hot] == [r.choices[0].message.content for r in ref]
    sent = after["ppd_prompt_tokens_total"] - before["ppd_prompt_tokens_total"]
    hits = after["ppd_prefix_cache_hits_total"] - before["ppd_prefix_cache_hits_total"]
    assert sent == sum(r.usage.prompt_tokens for r in hot) and hot[0].usage.prompt_tokens > 600
    assert hits == sum(r.usage.prompt_tokens_details.cached_tokens for r in hot)
    # the system prompt is computed once: all but one request take it from the cache
    assert sorted(r.usage.prompt_tokens_details.cached_tokens > 600 for r in hot) == [False] + [True] * (len(qs) - 1)
    assert (sent - hits) / sent < 0.2, (sent, hits)
    assert after["ppd_prefix_cache_held_total"] > before["ppd_prefix_cache_held_total"]


def test_more_conversations_than_slots(tmp_path_factory, cold, model_id):
    """Five conversations, one turn each in turn, through two slots: each new
    one takes a slot another conversation kept, which first goes to the block
    store; every second turn then finds its first turn there (not in a slot),
    and the answers equal the cold server's."""
    hot = start_server(tmp_path_factory, "-np", "2", "-c", "1024", "--prefix-cache-size", "64", name="store")
    try:
        hot_c, cold_c = client_for(hot), client_for(cold)
        convs = [[{"role": "system", "content": f"You serve customer number {i} today. {SYSTEM}"},
                  {"role": "user", "content": q}] for i, q in enumerate(
                      ["Do you have a history of Rome?", "Where are the cookbooks?", "Any poetry for a wedding?",
                       "I need a travel guide to Norway.", "Is there a science book for teenagers?"])]

        def ask(client, msgs):
            r = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=16, temperature=0)
            return r.choices[0].message.content, r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

        before = hot.metrics()
        turns = {}
        for step in range(2):
            for i, msgs in enumerate(convs):
                hot_a, n, cached = ask(hot_c, msgs)
                ref_a, _, _ = ask(cold_c, msgs)
                assert hot_a == ref_a, (step, i, hot_a, ref_a)
                turns[step, i] = (n, cached)
                convs[i] = msgs + [{"role": "assistant", "content": ref_a}, {"role": "user", "content": "Thank you."}]
        after = hot.metrics()
        store_hits = after["ppd_prefix_cache_store_hits_total"] - before["ppd_prefix_cache_store_hits_total"]
        for i in range(len(convs)):
            # the first turn's full blocks at least, from the store: the slots hold other conversations
            assert turns[1, i][1] >= turns[0, i][0] // 32 * 32, (i, turns)
        assert store_hits >= sum(turns[0, i][0] // 32 * 32 for i in range(len(convs))), store_hits
        block = after["ppd_prefix_cache_block_bytes"]
        assert block > 0 and block % (2 * 32 * 4) == 0   # K and V of 32 positions, f32, every layer
        assert after["ppd_prefix_cache_block_capacity"] == 64 * 2**20 // block
        assert 0 < after["ppd_prefix_cache_blocks"] <= after["ppd_prefix_cache_block_capacity"]
        assert after["ppd_prefix_cache_store_evictions_total"] == 0
        m = cold.metrics()
        assert m["ppd_prefix_cache_store_hits_total"] == m["ppd_prefix_cache_blocks"] == 0
        assert m["ppd_prefix_cache_block_capacity"] == 0
    finally:
        assert hot.stop() == 0, hot.log()


def test_bad_values_are_refused(tmp_path):
    conf = tmp_path / "pc.conf"
    conf.write_text("prefix-cache = sometimes\n")
    for args, env, needle in [(["--prefix-cache", "maybe"], {}, "prefix-cache: 'maybe'"),
                              ([], {"PPD_PREFIX_CACHE": "yes"}, "PPD_PREFIX_CACHE: 'yes'"),
                              (["--config", str(conf)], {}, "prefix-cache: 'sometimes'")]:
        p = subprocess.run([PPD_BIN, "serve", *args], capture_output=True, text=True, env={**os.environ, **env},
                           timeout=30)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and "on, off" in p.stderr, (args, p.stderr)
    p = subprocess.run([PPD_BIN, "serve", "--prefix-cache-size", "-2"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--prefix-cache-size: '-2' is not an integer in [-1, " in p.stderr, p.stderr
