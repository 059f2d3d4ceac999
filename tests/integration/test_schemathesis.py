"""schemathesis against openapi.yaml on a running server: generated requests
(valid, invalid, boundary values, undeclared methods) for every operation, and
every check it has: no 5xx, status codes, content types, headers and bodies
(SSE events included) as the spec says, schema-valid requests accepted and
schema-violating ones rejected.  A fixed seed keeps CI repeatable; set
PPD_ST_SEED (or PPD_ST_EXAMPLES for more cases) to explore further."""
import os
import subprocess
import sys

import requests

from conftest import start_server

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, "..", "..", "openapi.yaml")


def test_schemathesis_all_checks(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "2", "-c", "1024", "-n", "8", name="schemathesis")
    try:
        vocab = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["n_vocab"]
        st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        env = dict(os.environ, PPD_ST_VOCAB=str(vocab), SCHEMATHESIS_HOOKS="schemathesis_hooks",
                   PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [st, "run", SPEC, "--url", s.url, "--checks", "all", "-w", "1",
               "--max-examples", os.environ.get("PPD_ST_EXAMPLES", "40"),
               "--seed", os.environ.get("PPD_ST_SEED", "1"),
               "--generation-allow-x00", "false",   # jansson cannot hold U+0000 in a key (openapi.yaml says so)
               "--request-timeout", "120", "--max-response-time", "90"]
        # its cache directory goes to a temporary folder, not into the checkout
        r = subprocess.run(cmd, cwd=str(tmp_path_factory.mktemp("st-cwd")), env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]
        assert "Tested: 6" in r.stdout, r.stdout[-5000:]
    finally:
        rc = s.stop()
    assert rc == 0, s.log()
