"""Configuration: --help, bad flags, the config file < PPD_* env < flag
precedence, and the bounded queue (429 with Retry-After)."""
import json
import os
import re
import shutil
import subprocess
import time

import requests

from conftest import MODEL, PPD_BIN, start_server


def test_help_lists_every_setting():
    p = subprocess.run([PPD_BIN, "serve", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ["-m, --model", "-a, --alias", "--host", "--port", "--api-key", "-c, --ctx-size", "-n, --n-predict",
                 "-t, --threads", "-np, --parallel", "--max-queue", "--max-body", "--config", "PPD_CTX_SIZE"]:
        assert flag in p.stdout, flag


def test_help_env_and_config_file_share_one_table():
    """`ppd serve --help`, the PPD_* variables and config/ppd.conf come from one
    settings table (server/config.c): every key of ppd.conf is a flag and a
    variable in the help, every flag of the help is a key of ppd.conf, and an
    earlier name (--tree-size) still reads the same setting."""
    p = subprocess.run([PPD_BIN, "serve", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    here = os.path.dirname(os.path.abspath(__file__))
    conf = open(os.path.join(here, "..", "..", "config", "ppd.conf")).read()
    keys = set(re.findall(r"^#? ?([a-z][a-z0-9-]*) *=", conf, re.M))
    flags = set(re.findall(r"--([a-z][a-z0-9-]*)", p.stdout.split("\n  -h, --help")[0]))
    for key in keys:
        assert f"--{key}" in p.stdout, key
        assert "PPD_" + key.upper().replace("-", "_") in p.stdout, key
    old = {"tree-size"}   # earlier names, shown beside the current one
    assert flags - old - {"config"} <= keys, flags - old - {"config"} - keys
    assert "--tree-budget" in p.stdout and "also --tree-size" in p.stdout
    for args in (["--tree-size", "3"], ["--tree-budget", "3"]):
        q = subprocess.run([PPD_BIN, "serve", *args, "--help"], capture_output=True, text=True)
        assert q.returncode == 0, (args, q.stderr)
    for args, env in ((["--tree-size", "x"], {}), ([], {"PPD_TREE_SIZE": "x"}), (["--tree-budget", "x"], {})):
        q = subprocess.run([PPD_BIN, "serve", *args], capture_output=True, text=True, env={**os.environ, **env},
                           timeout=30)
        assert q.returncode == 2 and "is not an integer" in q.stderr, (args, env, q.stderr)
    for cmd in ("generate", "bench"):
        q = subprocess.run([PPD_BIN, cmd, "--help"], capture_output=True, text=True)
        assert "--tree-budget" in q.stdout + q.stderr, cmd


def _help_lines(*cmd):
    """`ppd CMD [SUBCMD] --help` as {long flag name: its line}, the env lines left out."""
    p = subprocess.run([PPD_BIN, *cmd, "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, (cmd, p.stderr)
    lines = {}
    for line in p.stdout.splitlines():
        m = re.match(r"  (?:-[a-zA-Z]+, )?--([a-z][a-z0-9-]*)", line)
        if m and m[1] != "help":
            lines[m[1]] = line
    return lines


def test_shared_settings_read_alike_everywhere():
    """The settings serve, generate and bench share come from one description
    each (server/settings.c): the same name, short flag, range, default and
    help text in every --help, so a rename or a new default in one program
    alone shows up here."""
    serve, generate, bench = _help_lines("serve"), _help_lines("generate"), _help_lines("bench")
    with_serve = {"model", "threads", "device", "ppd", "no-ppd", "tree", "tree-budget"}
    decoding = {"temp", "top-k", "top-p", "min-p", "seed", "ignore-eos"}
    for name in with_serve:
        assert name in serve and name in generate and name in bench, name
    assert {"ctx-size", "chat-template", "verbose"} <= serve.keys() & generate.keys()
    for name in decoding:
        assert name in generate and name in bench, name
    own = {"n-predict", "file", "json"}   # the same word for different things in each program
    for a, b in ((serve, generate), (serve, bench), (generate, bench)):
        for name in a.keys() & b.keys() - own:
            assert a[name] == b[name], (name, a[name], b[name])
    conf = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "ppd.conf")).read()
    for name in with_serve | {"ctx-size", "chat-template"}:
        assert re.search(rf"^#? ?{name} *=", conf, re.M), name
    # the example file sets a shared setting to the default every --help shows
    for name, value in re.findall(r"^([a-z][a-z0-9-]*) *= *(\S+)", conf, re.M):
        m = re.search(r"\(default ([^;)]*)", generate.get(name, ""))
        if m and name not in own:
            assert value == m[1], (name, value, m[1])
    for args in (["--tree-size", "x"], ["--device", "gpu"], ["--temp", "-1"]):
        for cmd in ("generate", "bench"):
            q = subprocess.run([PPD_BIN, cmd, *args, "-p", "x"], capture_output=True, text=True, timeout=30)
            assert q.returncode == 2 and args[0] in q.stderr, (cmd, args, q.stderr)


def test_toolchain_reads_the_shared_settings_alike():
    """distill, train, tree and adapter take the model, threads and verbose
    settings from the same descriptions as generate and serve, so their --help
    lines are the same; distill's -np is serve's --parallel with its own
    default; the seed of distill and train orders data, and is not the
    sampling seed.  A bad value exits 2 naming the flag."""
    generate, serve = _help_lines("generate"), _help_lines("serve")
    tools = {"distill": _help_lines("distill"), "train": _help_lines("train"), "tree": _help_lines("tree"),
             "adapter init": _help_lines("adapter", "init"), "adapter import": _help_lines("adapter", "import")}
    shared = {"model": tools.keys(), "threads": {"distill", "train", "tree"}, "verbose": {"distill", "train", "tree"}}
    for name, progs in shared.items():
        for prog in progs:
            assert tools[prog].get(name) == generate[name], (prog, name, tools[prog].get(name), generate[name])
    no_default = lambda line: re.sub(r" \(default [^)]*\)", "", line)
    assert no_default(tools["distill"]["parallel"]) == no_default(serve["parallel"])
    assert "(default 8)" in tools["distill"]["parallel"]
    for prog in ("distill", "train"):
        assert tools[prog]["seed"] != generate["seed"] and "(default 1)" in tools[prog]["seed"], prog
    # show opens a model only when given one
    assert "(default" not in _help_lines("adapter", "show")["model"]
    bad = [(["distill", "-f", "p.jsonl", "-o", "o.jsonl", "-t", "0"], "-t"),
           (["distill", "-np", "300"], "-np"), (["distill", "--seed", "-1"], "--seed"),
           (["train", "-d", "d.jsonl", "--lr", "x"], "--lr"), (["train", "--loss", "mse"], "--loss"),
           (["train", "--val=2"], "--val"), (["train", "--bogus"], "--bogus"),
           (["tree", "build", "-a", "a.gguf", "-L", "0"], "-L"), (["tree", "tune", "--count", "x"], "--count"),
           (["tree", "tune", "-a", "a.gguf", "-f", "p.jsonl", "--sizes", "4,x"], "--sizes"),
           (["adapter", "init", "--topk", "0"], "--topk"), (["adapter", "import", "x", "--n-prompt", "99"], "--n-prompt"),
           (["adapter", "show", "x", "-m"], "-m")]
    for args, flag in bad:
        q = subprocess.run([PPD_BIN, *args], capture_output=True, text=True, timeout=30)
        assert q.returncode == 2 and flag in q.stderr, (args, q.returncode, q.stderr)


def test_bad_settings_exit_2(tmp_path):
    for args, env, needle in [(["--bogus"], {}, "--bogus"), (["-np", "0"], {}, "[1, 256]"),
                              ([], {"PPD_PORT": "70000"}, "PPD_PORT"),
                              (["--config", str(tmp_path / "missing.conf")], {}, "missing.conf")]:
        p = subprocess.run([PPD_BIN, "serve", *args], capture_output=True, text=True, env={**os.environ, **env},
                           timeout=30)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    bad = tmp_path / "bad.conf"
    bad.write_text("parallel = 2\nwhat = 1\n")
    p = subprocess.run([PPD_BIN, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "bad.conf:2: what" in p.stderr


def test_precedence_and_queue_full(tmp_path_factory, monkeypatch):
    conf = tmp_path_factory.mktemp("conf") / "ppd.conf"
    conf.write_text(f'# test config\nmodel = "{MODEL}"\nalias = from-file\nparallel = 1\nmax-queue = 0\n'
                    "ctx-size = 512   # overridden by the flag\n")
    monkeypatch.setenv("PPD_ALIAS", "from-env")
    s = start_server(tmp_path_factory, "--config", str(conf), "-c", "300", name="conf")
    try:
        m = requests.get(s.url + "/v1/models", timeout=10).json()["data"][0]
        assert m["id"] == "from-env"           # env beats the file
        assert m["meta"]["n_ctx"] == 300       # the flag beats the file
        assert m["meta"]["n_parallel"] == 1    # the file beats the default
        # One slot, no queue: a second request while one runs is refused.
        r1 = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=60,
                           json={"messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
                                 "max_tokens": 280, "ignore_eos": True})
        r1_lines = r1.iter_lines()   # keep it: a dropped generator closes the connection
        next(r1_lines)
        r2 = requests.post(s.url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r2.status_code == 429
        assert r2.headers["Retry-After"] == "1"
        assert r2.json()["error"]["type"] == "rate_limit_error"
        r1.close()
        # Its slot is free once the cancellation has come back from the engine.
        deadline = time.time() + 20
        while time.time() < deadline and s.metrics()["ppd_request_cancelled_total"] < 1:
            time.sleep(0.05)
        r3 = requests.post(s.url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r3.status_code == 200
    finally:
        assert s.stop() == 0


def test_keepalive_while_waiting(tmp_path_factory):
    """One slot: the second stream waits for the first and gets SSE comment
    lines meanwhile; its content is still the same greedy answer.

    The wait does not depend on the machine's speed: the first stream asks for
    the whole context and is closed only once the second has received a
    keep-alive, so the second stream cannot start before that event."""
    s = start_server(tmp_path_factory, "-np", "1", "-c", "8192", "--sse-keepalive", "1", name="keepalive")
    try:
        body = {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8, "temperature": 0}
        alone = requests.post(s.url + "/v1/chat/completions", json=body, timeout=60).json()
        long = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=60,
                             json={"messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
                                   "max_tokens": 8000, "temperature": 0, "ignore_eos": True})
        long_lines = long.iter_lines()   # keep it: a dropped generator closes the connection
        next(long_lines)
        r = requests.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=120)
        events = r.iter_lines(decode_unicode=True)
        before = []                        # what the waiting stream received before the slot was freed
        for line in events:
            before.append(line)
            if line == ": keep-alive":
                break
        assert ": keep-alive" in before, before
        # only the opening role chunk may precede the wait: no generated text yet
        assert not [e for e in before if e.startswith("data: {") and
                    any(c["delta"].get("content") for c in json.loads(e[6:])["choices"])], before
        long.close()
        raw = "\n".join(list(events))
        text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                       for e in raw.split("\n") if e.startswith("data: {") and json.loads(e[6:])["choices"])
        assert text == alone["choices"][0]["message"]["content"]
        assert raw.rstrip().endswith("data: [DONE]")
    finally:
        assert s.stop() == 0


def test_request_deadline(tmp_path_factory):
    s = start_server(tmp_path_factory, "-np", "2", "-c", "2048", "--timeout", "1", name="deadline")
    try:
        body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000,
                "temperature": 0, "ignore_eos": True}
        t0 = time.time()
        r = requests.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "timeout"
        assert time.time() - t0 < 10
        raw = requests.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60).text
        last = [e for e in raw.split("\n\n") if e.startswith("data: ")][-1]
        assert json.loads(last[6:])["error"]["code"] == "timeout"
        # a short request still passes (one token after a two-token prompt: well inside
        # the second even on a sanitized build)
        ok = requests.post(s.url + "/v1/completions", timeout=60, json={"prompt": "Hi", "max_tokens": 1})
        assert ok.status_code == 200
    finally:
        assert s.stop() == 0


def test_version_features():
    """`ppd --version` names the CPU kernels' path (PPD_CPU_ISA caps it) and
    whether the CUDA backend is in the binary; under CI a machine with nvcc
    must have built it."""
    line = subprocess.run([PPD_BIN, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[1]
    m = re.fullmatch(r"features: cpu=(scalar|avx2|avx512vnni|amx) \(this CPU has up to (scalar|avx2|avx512vnni|amx)\) "
                     r"cuda=(built|not built)", line)
    assert m, line
    capped = subprocess.run([PPD_BIN, "--version"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PPD_CPU_ISA": "scalar"}).stdout
    assert "features: cpu=scalar " in capped
    if os.environ.get("CI") == "true" and (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        assert m[3] == "built", "CI=true with nvcc installed, but this ppd was built without the CUDA backend"
