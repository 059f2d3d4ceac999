#!/usr/bin/env python3
"""bench-prefix-cache.py — what the prefix cache saves, measured through the
official openai SDK against two `ppd serve` processes, --prefix-cache on and
off (same flags otherwise), both started first and queried in turn, so that
changes in the machine's load fall on both alike (an idle server does not
compute).

(a) Multi-turn chat: MT-Bench two-turn conversations; turn 1, then turn 2
    sent with turn 1's answer as a chat client does (streamed, to time the
    first token); each conversation on one server and then the other, the
    order alternating.  Reports the median time to first token of turn 2 with
    and without the cache, and whether every answer is the same.
(b) Shared system prompt: --clients clients at once, each a short question
    after the same ~1,000-token system prompt.  Reports the prompt tokens sent
    and the prompt tokens computed (sent minus the cache's hits, from
    /metrics), and whether every answer is the same.

Greedy decoding; the server decides PPD as usual (the adapter next to the
model).  Runs with the integration tests' venv:
    build/itest-venv/bin/python scripts/bench-prefix-cache.py
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time

from openai import OpenAI

SYSTEM_PARTS = [
    "You are the support assistant of Northwind Outfitters, a shop for hiking, climbing and camping gear.",
    "Answer in at most three sentences, in plain words, and never invent prices, stock levels or opening hours.",
    "Returns: unworn items within 60 days with the receipt; worn footwear within 14 days if it is faulty; "
    "gift cards and opened fuel canisters cannot be returned.",
    "Shipping: standard delivery takes three to five working days, express delivery one to two; orders over "
    "the free-shipping threshold ship free within the country; international orders pay customs on arrival.",
    "Repairs: the workshop mends zips, seams and tent poles; it resoles climbing shoes in about three weeks; "
    "sleeping bags are cleaned and refilled in spring only.",
    "Rentals: tents, stoves, crampons and ice axes can be rented per weekend or per week; a deposit is held "
    "on a card and released when the gear comes back clean and complete.",
    "Safety: for questions about avalanche risk, weather or route conditions, point the customer to the "
    "official mountain rescue bulletins and never give a judgement of your own.",
    "Loyalty: members collect one point per unit spent and get a voucher every hundred points; points expire "
    "after two years; members are invited to the yearly gear swap.",
]

QUESTIONS = [
    "Can I return boots I wore once?", "How long does express delivery take?", "Do you rent crampons?",
    "Can you fix a broken tent pole?", "Is the avalanche risk high this weekend?", "Do gift cards expire?",
    "When are sleeping bags refilled?", "How do loyalty points work?", "Can I return an opened gas canister?",
    "What does a stove rental cost?", "How long does a resole take?", "Do you ship abroad?",
    "What happens to my rental deposit?", "Can I swap old gear somewhere?", "Is shipping free?",
    "Can you repair a zip on my jacket?",
]


def start_server(a, cache, log_path):
    cmd = [a.bin, "serve", "-m", a.model, "--host", "127.0.0.1", "--port", "0", "-t", str(a.threads),
           "-np", str(a.parallel), "-c", str(a.ctx), "--max-queue", "1024", "--calibrate", "off",
           "--prefix-cache", "on" if cache else "off"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-prefix-cache: the server exited:\n{open(log_path).read()}")
        m = re.search(r"listening on http://[^:]+:(\d+)", open(log_path).read())
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
        time.sleep(0.1)
    proc.kill()
    sys.exit("bench-prefix-cache: the server did not start")


def metrics(client_url):
    import urllib.request

    out = {}
    for line in urllib.request.urlopen(client_url + "/metrics", timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def streamed(client, model, messages, max_tokens):
    """(text, seconds to the first text chunk, cached prompt tokens)."""
    t0 = time.perf_counter()
    ttft, parts, cached = None, [], 0
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
        extra = chunk.to_dict().get("timings")
        if extra:
            cached = extra["cached_prompt_tokens"]
    return "".join(parts), ttft if ttft is not None else time.perf_counter() - t0, cached


def conversation(a, client, model, t1, t2):
    """(answers, turn 2's time to first token, its cached prompt tokens)."""
    m1 = [{"role": "user", "content": t1}]
    a1, _, _ = streamed(client, model, m1, a.turn1_tokens)
    m2 = m1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": t2}]
    a2, t, c = streamed(client, model, m2, a.turn2_tokens)
    return (a1, a2), t, c


def run_chat(a, servers):
    """Every conversation on both servers, alternating which goes first."""
    convs = []
    with open(a.data) as f:
        for line in f:
            o = json.loads(line)
            if len(o["turns"]) >= 2:
                convs.append(o["turns"][:2])
            if len(convs) == a.conversations:
                break
    res = {cache: ([], [], []) for cache in servers}
    for i, (t1, t2) in enumerate(convs):
        for cache in ((True, False) if i % 2 == 0 else (False, True)):
            client, model, _ = servers[cache]
            ans, t, c = conversation(a, client, model, t1, t2)
            for lst, v in zip(res[cache], (ans, t, c)):
                lst.append(v)
    return res


def run_shared(a, client, model, url):
    system = " ".join(SYSTEM_PARTS * a.system_repeat)
    before = metrics(url)
    answers = [None] * a.clients

    def one(i):
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=a.shared_tokens, temperature=0)
        answers[i] = (r.choices[0].message.content, r.usage.prompt_tokens, r.to_dict()["timings"]["cached_prompt_tokens"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = metrics(url)
    sent = after["ppd_prompt_tokens_total"] - before["ppd_prompt_tokens_total"]
    hits = after["ppd_prefix_cache_hits_total"] - before["ppd_prefix_cache_hits_total"]
    return answers, sent, hits, wall, after


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/ppd")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--data", default="/work/shared/data/eval-mt_bench.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4, help="-np of the server")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--conversations", type=int, default=80, help="MT-Bench conversations (80: all)")
    ap.add_argument("--turn1-tokens", type=int, default=128)
    ap.add_argument("--turn2-tokens", type=int, default=16)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--system-repeat", type=int, default=4, help="copies of the system prompt text (~270 tokens each)")
    ap.add_argument("--shared-tokens", type=int, default=16)
    ap.add_argument("--json", help="write every figure to this file")
    a = ap.parse_args()
    procs, servers = [], {}
    try:
        for cache in (True, False):
            proc, url = start_server(a, cache, f"/tmp/bench-prefix-cache-{'on' if cache else 'off'}.log")
            procs.append(proc)
            client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
            servers[cache] = (client, client.models.list().data[0].id, url)
        chat = run_chat(a, servers) if a.conversations > 0 else {True: ([], [0], [0]), False: ([], [0], [0])}
        res = {cache: {"chat": chat[cache], "shared": run_shared(a, *servers[cache])} for cache in (True, False)}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    on, off = res[True], res[False]
    same_chat = on["chat"][0] == off["chat"][0]
    same_shared = [x[0] for x in on["shared"][0]] == [x[0] for x in off["shared"][0]]
    med_on, med_off = statistics.median(on["chat"][1]), statistics.median(off["chat"][1])
    print(f"(a) {len(on['chat'][1])} MT-Bench conversations, turn 2 time to first token (median): "
          f"cache on {med_on * 1e3:.1f} ms, off {med_off * 1e3:.1f} ms (on/off {med_on / max(med_off, 1e-9):.2f}); "
          f"turn 2 prompt tokens from the cache: median {statistics.median(on['chat'][2]):.0f}; "
          f"answers identical: {same_chat}")
    for cache, r in ((True, on), (False, off)):
        _, sent, hits, wall, m = r["shared"]
        print(f"(b) {a.clients} clients, shared system prompt ({r['shared'][0][0][1]} prompt tokens each), "
              f"cache {'on ' if cache else 'off'}: sent {sent:.0f}, computed {sent - hits:.0f} "
              f"({(sent - hits) / sent * 100:.0f}%), wall {wall:.1f} s"
              + (f"; {m['ppd_prefix_cache_held_total']:.0f} held back;"
                 f" idle: {m['ppd_prefix_cache_slots']:.0f} slots keep {m['ppd_prefix_cache_tokens']:.0f} tokens"
                 if cache else ""))
    print(f"(b) answers identical: {same_shared}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"chat_ttft2_on": on["chat"][1], "chat_ttft2_off": off["chat"][1], "chat_cached": on["chat"][2],
                       "shared_on": on["shared"][1:4], "shared_off": off["shared"][1:4],
                       "same_chat": same_chat, "same_shared": same_shared}, f, indent=1)
    return 0 if same_chat and same_shared else 1


if __name__ == "__main__":
    sys.exit(main())
