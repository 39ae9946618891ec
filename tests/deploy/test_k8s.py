"""Kubernetes manifests: the kustomize build validates against the Kubernetes schemas,
and the numbers that matter hold (HPA, KEDA, grace periods, body size, probes)."""

import re

import kubernetes_validate
import pytest
import yaml

import deploylib as L

# Oldest and newest Kubernetes versions the manifests are checked against.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
MARGIN_SECS = 5


@pytest.fixture(scope="module", params=L.K8S_ROOTS, ids=lambda p: str(p.relative_to(L.REPO)))
def built(request):
    return L.kustomize(request.param)


@pytest.fixture(scope="module")
def base():
    return L.kustomize(L.K8S_BASE)


def config(docs):
    return L.one(docs, "ConfigMap", "artefatos-config")["data"]


def test_build_has_every_piece(built):
    kinds = {}
    for d in built:
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
    for kind in ["Namespace", "ConfigMap", "Deployment", "Service", "Ingress",
                 "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject",
                 "ServiceMonitor", "PrometheusRule"]:
        assert kind in kinds, f"no {kind} in the build"
    assert sorted(kinds["Deployment"]) == ["artefatos-api", "artefatos-worker-pdf",
                                          "artefatos-worker-xlsx"]
    for d in built:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "artefatos", d["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_resources_validate_strictly(built, version):
    errors = []
    for d in built:
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not errors, "\n".join(errors)


def test_custom_resources_match_their_crd_fields(built):
    import jsonschema

    import crd_schemas

    errors = []
    for d in built:
        schema = crd_schemas.BY_KIND.get(d["kind"])
        if schema is None:
            continue
        for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
        if d["kind"] == "ScaledObject":
            for t in d["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    for e in jsonschema.Draft202012Validator(
                            crd_schemas.PROMETHEUS_TRIGGER_METADATA).iter_errors(t["metadata"]):
                        errors.append(f"{d['metadata']['name']} trigger: {e.message}")
            # The HPA behavior KEDA passes through must be a valid autoscaling/v2 one.
            behavior = d["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
            if behavior:
                hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": "x"},
                       "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                                "maxReplicas": 1, "behavior": behavior}}
                try:
                    kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{d['metadata']['name']} behavior: {e.message}")
    assert not errors, "\n".join(errors)
    assert {d["kind"] for d in built} >= set(crd_schemas.BY_KIND)


def test_python_fallback_matches_real_kustomize():
    if not L.kustomize_command():
        pytest.skip("no kubectl/kustomize here: the Python build is the only one")
    for root in L.K8S_ROOTS:
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        real = {key(d): d for d in L.kustomize_real(root)}
        mine = {key(d): d for d in L.kustomize_python(root)}
        assert real == mine, f"{root}: the Python kustomize fallback differs from kustomize"


def test_images_are_rewritten_in_every_container(built):
    for d in built:
        for c in L.containers(d):
            assert ":" in c["image"] and not c["image"].startswith("artefatos"), \
                f"{d['metadata']['name']}/{c['name']}: image {c['image']} not set by kustomize images"


def test_api_hpa_scales_2_to_10_on_cpu_70(base):
    hpa = L.one(base, "HorizontalPodAutoscaler", "artefatos-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "artefatos-api"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    assert spec["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    api = L.one(base, "Deployment", "artefatos-api")
    assert "replicas" not in api["spec"], "the HPA owns replicas; a fixed count fights it"
    for c in L.pod_spec(api)["containers"]:
        assert "cpu" in c["resources"]["requests"], "HPA utilisation needs a CPU request"


@pytest.mark.parametrize("fmt", ["xlsx", "pdf"])
def test_keda_scales_each_worker_1_to_10_at_10_per_replica(base, fmt):
    name = f"artefatos-worker-{fmt}"
    so = L.one(base, "ScaledObject", name)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == name
    L.one(base, "Deployment", name)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert len(spec["triggers"]) == 1
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus", "amqp mode ignores unacked messages (README)"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"
    meta = trigger["metadata"]
    assert float(meta["threshold"]) == 10
    assert meta["serverAddress"].startswith("http")
    selectors, _ = L.promql_selectors(meta["query"])
    # Ready messages plus the jobs workers hold (amqp mode would miss the latter).
    assert [s[0] for s in selectors] == ["artefatos_queue_depth", "artefatos_jobs_in_flight"]
    query = meta["query"].replace(" ", "")
    assert f'format="{fmt}"' in query
    # Prometheus' `namespace` target label is the pod's namespace: the query must name
    # the one kustomize puts the workers in, or it reads another deployment's queue.
    assert f'namespace="{so["metadata"]["namespace"]}"' in query
    worker = L.one(base, "Deployment", name)
    env = {e["name"]: e.get("value") for e in L.pod_spec(worker)["containers"][0].get("env", [])}
    assert env["ARTEFATOS_WORKER_FORMATS"] == fmt
    assert "replicas" not in worker["spec"], "KEDA owns replicas"


def test_grace_periods_exceed_drain_time(base):
    drain = L.parse_duration_secs(config(base)["ARTEFATOS_SHUTDOWN_GRACE"])
    for d in L.by_kind(base, "Deployment"):
        spec = L.pod_spec(d)
        pre_stop = 0
        for c in spec["containers"]:
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if cmd[:1] == ["sleep"]:
                pre_stop = max(pre_stop, int(cmd[1]))
        need = pre_stop + drain + MARGIN_SECS
        assert spec["terminationGracePeriodSeconds"] >= need, \
            f"{d['metadata']['name']}: grace {spec['terminationGracePeriodSeconds']}s < " \
            f"preStop {pre_stop}s + drain {drain}s + margin {MARGIN_SECS}s"
    api = L.pod_spec(L.one(base, "Deployment", "artefatos-api"))["containers"][0]
    assert api["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep", \
        "API needs a preStop sleep so endpoints drain before SIGTERM"


def test_body_size_limits_agree(base):
    api_limit = int(config(base)["ARTEFATOS_MAX_BODY_BYTES"])
    default = eval(L.config_default("ARTEFATOS_MAX_BODY_BYTES"), {})  # "16 * 1024 * 1024"
    assert api_limit == default
    ingress = L.one(base, "Ingress", "artefatos-api")
    ingress_limit = L.parse_nginx_size(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"])
    server = (L.DEPLOY / "nginx" / "artefatos-server.conf").read_text()
    nginx_limits = re.findall(r"^\s*client_max_body_size\s+(\S+);", server, re.M)
    assert len(nginx_limits) == 1
    compose = yaml.safe_load((L.DEPLOY / "compose.yaml").read_text())
    compose_limit = int(compose["x-artefatos-env"]["ARTEFATOS_MAX_BODY_BYTES"])
    assert {api_limit, ingress_limit, L.parse_nginx_size(nginx_limits[0]), compose_limit} \
        == {api_limit}


def test_probes_resources_and_non_root(base):
    for d in L.by_kind(base, "Deployment"):
        spec = L.pod_spec(d)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in L.containers(d):
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
        for c in spec["containers"]:
            assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
            assert c["ports"][0]["containerPort"] == 8080


def test_migrations_run_before_every_process(base):
    for d in L.by_kind(base, "Deployment"):
        init = L.pod_spec(d).get("initContainers", [])
        assert [c["args"] for c in init] == [["migrate"]], d["metadata"]["name"]


def test_pdbs_select_each_deployment(base):
    for d in L.by_kind(base, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        pdbs = [p for p in L.by_kind(base, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(pdbs) == 1, d["metadata"]["name"]
        assert pdbs[0]["spec"].get("maxUnavailable") == 1


def test_services_and_servicemonitor_reach_every_pod(base):
    services = L.by_kind(base, "Service")
    for d in L.by_kind(base, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(s["spec"]["selector"].items() <= labels.items() for s in services), \
            f"no Service selects {d['metadata']['name']}, so nothing scrapes it"
    sm = L.one(base, "ServiceMonitor", "artefatos")
    selected = [s for s in services
                if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert len(selected) == len(services)
    for s in selected:
        ports = {p["name"] for p in s["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    ingress = L.one(base, "Ingress", "artefatos-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    L.one(base, "Service", backend["name"])


def test_config_keys_are_variables_the_service_reads(base):
    known = L.config_variables() | {"RUST_LOG"}
    example = L.load_yaml_docs(L.DEPLOY / "k8s" / "examples" / "secret.example.yaml")
    keys = set(config(base)) | set(L.one(example, "Secret", "artefatos-secrets")["stringData"])
    for d in L.by_kind(base, "Deployment"):
        for c in L.containers(d):
            keys |= {e["name"] for e in c.get("env", [])}
    assert keys - known == set(), "variables src/config.rs does not read"


def test_prometheusrule_is_alerts_yaml():
    assert L.PROMETHEUS_RULE.read_text() == L.render_prometheus_rule(), \
        "regenerate: python3 tests/deploy/deploylib.py sync-prometheusrule"


# What the Ingress may publish: the job endpoints and the API description.
PUBLIC = {("/generate", "Exact"), ("/status", "Prefix"), ("/download", "Prefix"),
          ("/openapi.json", "Exact")}
PRIVATE_URLS = ["/metrics", "/health/live", "/health/ready", "/health/actors", "/",
                "/metricsx", "/health"]


def ingress_matches(path: str, path_type: str, url: str) -> bool:
    """Kubernetes path matching: Exact is equality; Prefix matches whole path
    elements (`/status` matches `/status` and `/status/x`, not `/statusx`);
    ImplementationSpecific is treated as the widest (a plain prefix)."""
    if path_type == "Exact":
        return url == path
    if path_type == "Prefix":
        stem = path.rstrip("/")
        return stem == "" or url == stem or url.startswith(stem + "/")
    return url.startswith(path)


def test_the_ingress_publishes_only_the_job_endpoints(built):
    for ingress in L.by_kind(built, "Ingress"):
        assert "defaultBackend" not in ingress["spec"], "a default backend publishes everything"
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert (p["path"], p["pathType"]) in PUBLIC, f"published: {p['path']}"
                for url in PRIVATE_URLS:
                    assert not ingress_matches(p["path"], p["pathType"], url), \
                        f"{p['path']} ({p['pathType']}) publishes {url}"
            for url in ["/generate", "/status/abc", "/download/abc", "/openapi.json"]:
                assert any(ingress_matches(p["path"], p["pathType"], url)
                           for p in rule["http"]["paths"]), f"{url} not published"


def test_no_secret_with_literal_credentials_is_applied(built):
    """The base and overlays reference `artefatos-secrets` but never create it: an
    apply must not overwrite real credentials, and static AWS keys would defeat IRSA."""
    for d in L.by_kind(built, "Secret"):
        assert not d.get("data") and not d.get("stringData"), \
            f"Secret {d['metadata']['name']} carries literal values"
    for d in L.by_kind(built, "Deployment"):
        for c in L.containers(d):
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, \
                f"{d['metadata']['name']}: static AWS keys defeat IRSA"
            refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
            assert refs in ([], ["artefatos-secrets"]), refs
