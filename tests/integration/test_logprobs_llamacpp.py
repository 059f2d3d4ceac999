"""The server's logprobs against llama.cpp's on the model with every weight in
F32 (where both decode the same greedy tokens), prompt (echo) and
continuation: each token's logprob and its top alternatives within 1e-4.

Needs llama-cpp-python and the F32 file, so it runs only under
`make check-logprobs` (which sets PPD_LLAMACPP_PYTHON and PPD_F32_MODEL);
`make test` leaves it out.  The reference comes from
tests/golden/llamacpp_logprobs.py."""
import json
import os
import subprocess

import pytest
import requests

from conftest import start_server

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "golden", "llamacpp_logprobs.py")
TOL = 1e-4
N_GEN, TOP = 24, 5
PROMPTS = ["The capital of France is",
           "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
           "def fibonacci(n):"]


@pytest.mark.only_with_env("PPD_LLAMACPP_PYTHON")
def test_logprobs_match_llamacpp(tmp_path_factory):
    model = os.environ.get("PPD_F32_MODEL", "models/quants/SmolLM2-135M-Instruct.F32.gguf")
    ref = json.loads(subprocess.run([os.environ["PPD_LLAMACPP_PYTHON"], SCRIPT, "--model", model, "--n-gen", str(N_GEN),
                                     "--top", str(TOP)], input=json.dumps(PROMPTS), capture_output=True, text=True,
                                    check=True).stdout)
    s = start_server(tmp_path_factory, "-m", model, "-np", "1", "-c", "512", name="f32")
    try:
        worst, compared = 0.0, 0
        for case in ref["cases"]:
            body = {"prompt": case["prompt_ids"], "max_tokens": N_GEN, "temperature": 0, "ignore_eos": True,
                    "logprobs": TOP, "echo": True}
            got = requests.post(s.url + "/v1/completions", json=body, timeout=300).json()["choices"][0]["logprobs"]
            assert len(got["tokens"]) == len(case["prompt_ids"]) + N_GEN
            for j, row in enumerate(case["rows"], start=1):
                assert abs(got["token_logprobs"][j] - row["logprob"]) <= TOL, (j, got["token_logprobs"][j], row)
                worst = max(worst, abs(got["token_logprobs"][j] - row["logprob"]))
                # the alternatives: the same values, by rank
                ours = sorted(got["top_logprobs"][j].values(), reverse=True)[:TOP]
                for a, (_, b) in zip(ours, row["top"]):
                    assert abs(a - b) <= TOL, (j, ours, row["top"])
                    worst = max(worst, abs(a - b))
                compared += 1
            # the same greedy continuation: each chosen token is llama.cpp's favourite
            n_p = len(case["prompt_ids"])
            for k, tok in enumerate(case["gen_ids"]):
                assert abs(got["token_logprobs"][n_p + k] - case["rows"][n_p + k - 1]["top"][0][1]) <= TOL
        print(f"logprobs vs llama.cpp (F32): {compared} positions, max |difference| {worst:.3g}")
    finally:
        assert s.stop() == 0
