"""Errors in OpenAI's shape with the statuses of docs/serving.md, and
authentication with --api-key."""
import json
import socket

import openai
import pytest
import requests

from conftest import read_http, start_server


def check_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def post(server, path, **kw):
    return requests.post(server.url + path, timeout=60, **kw)


def test_unknown_model_404(server, client):
    err = check_error(post(server, "/v1/chat/completions",
                           json={"model": "gpt-9", "messages": [{"role": "user", "content": "Hi"}]}),
                      404, "model", "model_not_found")
    assert err["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])


def test_malformed_json_400(server):
    check_error(post(server, "/v1/chat/completions", data=b'{"messages": [', headers={"Content-Type": "application/json"}),
                400, code="invalid_json")
    check_error(post(server, "/v1/completions", data=b"[1, 2]"), 400)
    check_error(post(server, "/v1/completions", data=b""), 400)


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("temperature", 3.5), ("max_tokens", "ten"), ("max_tokens", 0), ("top_p", 1.5),
    ("top_k", 1.5), ("stream", "yes"), ("stop", 5), ("stop", ["a", 1]), ("seed", "x"), ("n", 0), ("n", 17),
    ("n", 1.5), ("presence_penalty", 9), ("stream_options", 3), ("logprobs", 1), ("top_logprobs", 21),
    ("top_logprobs", -1), ("echo", True), ("model", 7),
])
def test_wrong_field_400(server, field, value):
    body = {"messages": [{"role": "user", "content": "Hi"}], field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    check_error(post(server, "/v1/chat/completions", json=body), 400, param=field)


@pytest.mark.parametrize("body,param", [
    ({"top_logprobs": 3}, "top_logprobs"),                   # without logprobs: true
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
])
def test_logprobs_fields_400(server, body, param):
    body = {"messages": [{"role": "user", "content": "Hi"}], **body}
    check_error(post(server, "/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize("field,value", [("logprobs", 6), ("logprobs", -1), ("logprobs", True), ("logprobs", 1.5),
                                         ("echo", 1), ("n", 17)])
def test_wrong_completion_field_400(server, field, value):
    check_error(post(server, "/v1/completions", json={"prompt": "Hi", field: value}), 400, param=field)


def test_n_beyond_what_the_server_holds_400(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "1", "--max-queue", "2", "-c", "256", name="smallqueue")
    try:
        body = {"messages": [{"role": "user", "content": "Hi"}], "n": 4, "max_tokens": 1}
        err = check_error(requests.post(s.url + "/v1/chat/completions", json=body, timeout=60), 400, param="n")
        assert "--max-queue" in err["message"]
        ok = requests.post(s.url + "/v1/chat/completions", json={**body, "n": 3}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 3
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("body,param", [
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages"), ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
])
def test_bad_messages_400(server, body, param):
    check_error(post(server, "/v1/chat/completions", json=body), 400, param=param)


def test_bad_prompt_400(server):
    check_error(post(server, "/v1/completions", json={}), 400, param="prompt")
    check_error(post(server, "/v1/completions", json={"prompt": 5}), 400, param="prompt")
    check_error(post(server, "/v1/completions", json={"prompt": ["a", "b"]}), 400, param="prompt")
    check_error(post(server, "/v1/completions", json={"prompt": [1, 10 ** 9]}), 400, param="prompt")


def test_over_long_prompt_400(server, client, model_id):
    long = "hello " * 1500          # > 1024 tokens of context
    err = check_error(post(server, "/v1/completions", json={"prompt": long}), 400, code="context_length_exceeded")
    assert "1024" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": long}])


def test_unknown_route_404(server):
    check_error(requests.get(server.url + "/v1/nothing", timeout=10), 404)


def test_wrong_method_405_with_allow(server):
    # a known path asked with a method it does not serve is not "not found"
    r = requests.get(server.url + "/v1/chat/completions", timeout=10)
    check_error(r, 405, code="method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = requests.delete(server.url + "/health", timeout=10)
    check_error(r, 405, code="method_not_allowed")
    assert r.headers["Allow"] == "GET, HEAD"
    assert requests.head(server.url + "/health", timeout=10).status_code == 200


def test_integers_beyond_64_bits(server):
    # JSON has no integer limit: an unknown field may hold one (ignored), a known
    # one is out of range (400 naming it); integral reals count as integers
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    r = post(server, "/v1/chat/completions", data=json.dumps(body)[:-1] + ', "x_extra": 123456789012345678901234567890}')
    assert r.status_code == 200, r.text
    r = post(server, "/v1/chat/completions", data=json.dumps(body)[:-1] + ', "seed": 123456789012345678901234567890}')
    check_error(r, 400, param="seed")
    r = post(server, "/v1/chat/completions", json=dict(body, max_tokens=2.0))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text


def test_body_too_large_413(server):
    big = b'{"prompt": "' + b"a" * (2 << 20) + b'"}'
    check_error(post(server, "/v1/completions", data=big), 413)


def test_declared_huge_body_refused_before_it_is_read(server):
    """A Content-Length past --max-body gets its 413 without the server waiting for
    (or reading) the body: the client sends only the headers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1073741824\r\n\r\n")
        status, body = read_http(sock)   # a server that waited for the body would not answer before the timeout
    assert status == 413, body[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_header_block_too_large_431(server):
    r = requests.get(server.url + "/health", headers={"X-Big": "a" * 100000}, timeout=30)
    assert r.status_code == 431


def test_bad_request_does_not_disturb_streams(server, client, model_id):
    msgs = [{"role": "user", "content": "Count from one to five."}]
    ref = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=24, stream=True)
    text = ""
    for i, c in enumerate(stream):
        if i == 2:
            check_error(post(server, "/v1/chat/completions", data=b"{{{"), 400)
        if c.choices:
            text += c.choices[0].delta.content or ""
    assert text == ref.choices[0].message.content


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "1", "-c", "256", "--api-key", "sekrit", name="keyed")
    yield s
    assert s.stop() == 0


def test_api_key_401(keyed):
    from openai import OpenAI

    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    err = check_error(requests.post(keyed.url + "/v1/chat/completions", json=body, timeout=30), 401)
    assert err["type"] == "authentication_error"
    check_error(requests.post(keyed.url + "/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": "Bearer wrong"}), 401)
    check_error(requests.get(keyed.url + "/v1/models", timeout=30, headers={"Authorization": "Bearer sekri"}), 401)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0).models.list()
    good = OpenAI(base_url=keyed.url + "/v1", api_key="sekrit", max_retries=0)
    assert good.chat.completions.create(model=good.models.list().data[0].id, messages=body["messages"],
                                        max_tokens=2).usage.completion_tokens <= 2
    # health and metrics stay open
    assert requests.get(keyed.url + "/health", timeout=30).status_code == 200
    assert requests.get(keyed.url + "/metrics", timeout=30).status_code == 200
