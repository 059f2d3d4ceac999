"""openapi.yaml is true to the server: real responses conform to its
schemas, and for a set of request bodies the schema accepts exactly those
the server accepts (schemathesis will add generated cases later)."""
import os

import jsonschema
import pytest
import requests
import yaml

SPEC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "openapi.yaml")


@pytest.fixture(scope="module")
def spec():
    with open(SPEC_PATH) as f:
        return yaml.safe_load(f)


def to_jsonschema(spec, node):
    """OpenAPI 3.0 schema -> JSON Schema: resolve $ref, turn nullable into a null alternative."""
    if isinstance(node, list):
        return [to_jsonschema(spec, x) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        path = node["$ref"].lstrip("#/").split("/")
        target = spec
        for p in path:
            target = target[p]
        return to_jsonschema(spec, target)
    out = {k: to_jsonschema(spec, v) for k, v in node.items() if k not in ("nullable", "description", "format")}
    if node.get("nullable"):
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
        return {"anyOf": [out, {"type": "null"}]}
    return out


def schema(spec, name):
    return to_jsonschema(spec, {"$ref": f"#/components/schemas/{name}"})


def response_schema(spec, path, method, status, ctype="application/json"):
    r = spec["paths"][path][method]["responses"][str(status)]
    if "$ref" in r:
        r = to_jsonschema(spec, r)
    return to_jsonschema(spec, r["content"][ctype]["schema"])


def is_valid(s, obj):
    try:
        jsonschema.validate(obj, s)
        return True
    except jsonschema.ValidationError:
        return False


def test_responses_conform(server, spec, model_id):
    u = server.url
    r = requests.get(u + "/health", timeout=10)
    jsonschema.validate(r.json(), response_schema(spec, "/health", "get", 200))
    for path in ("/v1/models", "/models"):
        r = requests.get(u + path, timeout=10)
        jsonschema.validate(r.json(), to_jsonschema(spec, spec["paths"][path]["get"]["responses"]["200"])
                            ["content"]["application/json"]["schema"])
    body = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    jsonschema.validate(body, schema(spec, "ChatCompletionRequest"))
    r = requests.post(u + "/v1/chat/completions", json=body, timeout=60)
    jsonschema.validate(r.json(), response_schema(spec, "/v1/chat/completions", "post", 200))
    body = {"prompt": "Hi", "max_tokens": 4}
    r = requests.post(u + "/v1/completions", json=body, timeout=60)
    jsonschema.validate(r.json(), response_schema(spec, "/v1/completions", "post", 200))
    # n choices with logprobs (and echo) in their full shapes
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "n": 2, "logprobs": True, "top_logprobs": 3}
    r = requests.post(u + "/v1/chat/completions", json=body, timeout=60).json()
    assert len(r["choices"]) == 2 and r["choices"][1]["logprobs"]["content"]
    jsonschema.validate(r, response_schema(spec, "/v1/chat/completions", "post", 200))
    body = {"prompt": "Hi there", "max_tokens": 4, "n": 2, "logprobs": 2, "echo": True}
    r = requests.post(u + "/v1/completions", json=body, timeout=60).json()
    assert r["choices"][1]["logprobs"]["token_logprobs"][0] is None
    jsonschema.validate(r, response_schema(spec, "/v1/completions", "post", 200))
    for path, status, kw in [("/v1/completions", 400, {"data": b"{"}),
                             ("/v1/completions", 404, {"json": {"prompt": "x", "model": "nope"}}),
                             ("/v1/completions", 413, {"data": b"[" + b" " * (2 << 20) + b"]"})]:
        r = requests.post(u + path, timeout=60, **kw)
        assert r.status_code == status
        jsonschema.validate(r.json(), response_schema(spec, path, "post", status))


CHAT_BODIES = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {"messages": [{"role": "user", "content": "Hi"}], "model": None, "temperature": None, "stop": None},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "top_k": 3},
    {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
    {"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b", "c", "d"], "seed": -5, "n": 1},
    {"messages": [{"role": "user", "content": "Hi"}], "stream_options": {"include_usage": None}, "logprobs": False},
    {"messages": [{"role": "user", "content": "Hi"}], "unknown_field": {"ignored": True}, "user": "u1"},
    {"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": True},
    {"messages": [{"role": "user", "content": "Hi"}], "ppd": False},
    {"messages": [{"role": "user", "content": "Hi"}], "ppd": None},
    {"messages": [{"role": "user", "content": "Hi"}], "n": 3, "logprobs": True, "top_logprobs": 20},
    {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": None},
    {"messages": [{"role": "user", "content": "Hi"}], "temperature": 2, "top_p": 0, "min_p": 1,
     "presence_penalty": -2, "frequency_penalty": 2},
    # rejected
    {},
    {"messages": []},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": [{"role": "user", "content": "Hi"}], "temperature": -0.1},
    {"messages": [{"role": "user", "content": "Hi"}], "top_p": 1.01},
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0},
    {"messages": [{"role": "user", "content": "Hi"}], "n": 17},
    {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 21},
    {"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2},
    {"messages": [{"role": "user", "content": "Hi"}], "logprobs": 2},
    {"messages": [{"role": "user", "content": "Hi"}], "echo": True},
    {"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b", "c", "d", "e"]},
    {"messages": [{"role": "user", "content": "Hi"}], "stream": 1},
    {"messages": [{"role": "user", "content": "Hi"}], "seed": 1.5},
    {"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": "no"},
    {"messages": [{"role": "user", "content": "Hi"}], "ppd": "off"},
    {"messages": [{"role": "user", "content": "Hi"}], "stream_options": {"include_usage": "yes"}},
]

COMPLETION_BODIES = [
    {"prompt": "Hi"}, {"prompt": ["Hi"]}, {"prompt": [1, 2, 3]}, {"prompt": "Hi", "echo": False},
    {"prompt": "Hi", "echo": True, "logprobs": 5, "n": 2}, {"prompt": [1, 2], "logprobs": 0, "echo": True},
    # rejected
    {"prompt": ["a", "b"]}, {"prompt": []}, {"prompt": 5}, {"prompt": [-1]}, {"prompt": "Hi", "logprobs": 6},
    {"prompt": "Hi", "logprobs": True}, {"prompt": "Hi", "n": 0},
]


@pytest.mark.parametrize("path,name,bodies", [("/v1/chat/completions", "ChatCompletionRequest", CHAT_BODIES),
                                              ("/v1/completions", "CompletionRequest", COMPLETION_BODIES)])
def test_schema_accepts_what_server_accepts(server, spec, path, name, bodies):
    s = schema(spec, name)
    for body in bodies:
        if "max_tokens" not in body:
            body = {**body, "max_tokens": 1}   # keep accepted requests short
        r = requests.post(server.url + path, json=body, timeout=60)
        assert r.status_code in (200, 400), (body, r.text)
        assert is_valid(s, body) == (r.status_code == 200), (body, r.status_code, r.text)
