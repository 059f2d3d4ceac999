"""Schemathesis hooks for test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

openapi.yaml cannot state one bound: a prompt given as token ids must hold ids
below the served model's vocabulary size, which only the running server knows
(/v1/models meta.n_vocab; the test passes it in PPD_ST_VOCAB).  Nor can it state
that a completion prompt must encode to at least one token: the default model's
vocabulary lacks some control bytes (llama.cpp drops them too), so a prompt of
only those is empty, a 400.  Generated bodies that break either are dropped, so
"schema-valid but rejected" means a real mismatch.  And a valid max_tokens above
MAX_NEW is lowered to it, so a generated 10^9 does not decode until the context
is full (the server's answer to the range itself is tested either way: only
in-range values are lowered).  That holds for a number with no fraction too
(1e3, 1000.0): JSON Schema counts it as an integer, and the server takes it.
The lowering happens in before_call, just before each request goes out, so
it reaches every phase, the coverage phase's boundary values (2^30 - 1)
included.
"""
import os

import schemathesis

VOCAB = int(os.environ.get("PPD_ST_VOCAB", "0"))
MAX_NEW = 8
MAX_TOKENS_HI = 1073741824   # openapi.yaml's bound


def _ids_out_of_vocab(body):
    if not isinstance(body, dict):
        return False
    p = body.get("prompt")
    if not isinstance(p, list):
        return False
    return any(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= VOCAB for x in p)


def _only_control_chars(body):
    if not isinstance(body, dict):
        return False
    p = body.get("prompt")
    texts = [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)] if isinstance(p, list) else []
    return any(t and all(ord(c) < 0x20 or c == "\x7f" for c in t) for t in texts)


def _integral(v):
    """An int, or a float with no fraction (what JSON Schema calls an integer)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


@schemathesis.hook
def filter_body(ctx, body):
    return not ((VOCAB and _ids_out_of_vocab(body)) or _only_control_chars(body))


@schemathesis.hook
def before_call(ctx, case, kwargs):
    body = case.body
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if _integral(v) and MAX_NEW < v <= MAX_TOKENS_HI:
                body[key] = type(v)(MAX_NEW)   # 8.0 stays a float: the server still parses that form
