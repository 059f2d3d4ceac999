"""The small OpenAI-style client the GPU checks share (standard library only:
a GPU machine may have no pip): the served model's id, and one
non-streaming greedy chat completion."""
import json
import urllib.request


def model_id(port, timeout=30):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=timeout) as r:
        return json.load(r)["data"][0]["id"]


def chat(port, model, prompt, max_tokens, timeout=120):
    """The parsed response of one greedy chat completion; raises on HTTP or network errors."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)
