"""``privmesh deploy render``: valid Kubernetes objects, isolated domains, no rot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from domains.folders import DomainFolder, DomainSet, domain_set, scan
from domains.runtime import DEMO_DOMAINS_DIR, RuntimeSettings
from domains.scaffold import scaffold_domain
from infra.deploy import (
    DOMAIN_LABEL,
    DOMAINS_DIR,
    GENERATED,
    PUBLIC_PREFIXES,
    DeployOptions,
    k8s_name,
    render,
    write,
)
from infra.errors import InvalidDeployValue
from tests.infra.test_cli import assert_one_line_error, run_cli

COMMITTED = Path(__file__).parents[2] / "infra" / "manifests" / "k8s"
# The oldest and the newest minor the Kubernetes project supports in December 2026.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
NEW_TEAM = ("alpha_team", "beta")


def demo() -> DomainSet:
    return domain_set(RuntimeSettings(domain_dirs=(DEMO_DOMAINS_DIR,)))


def new_team(root: Path) -> DomainSet:
    """Two scaffolded domains that train together (so both get a SuperNode)."""
    folder = root / "mesh"
    scaffold_domain(folder, NEW_TEAM[0], (NEW_TEAM[1],))
    scaffold_domain(folder, NEW_TEAM[1], (NEW_TEAM[0],))
    return scan((folder,))


def objects(files: dict[str, str], *, secrets: bool = True) -> list[dict[str, Any]]:
    found = []
    for name, text in files.items():
        if name == "kustomization.yaml" or (name.startswith("secrets") and not secrets):
            continue
        found += [d for d in yaml.safe_load_all(text) if d is not None]
    return found


def pod_templates(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod template) of every workload."""
    for obj in objs:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]["template"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def demo_files() -> dict[str, str]:
    return render(demo())


@pytest.fixture(scope="module")
def team_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return render(new_team(tmp_path_factory.mktemp("team")))


def test_committed_manifests_are_the_demo_render(demo_files: dict[str, str]) -> None:
    """infra/manifests/k8s is exactly what the generator renders for the demo domains
    (rerun `privmesh deploy render --out infra/manifests/k8s` after changing either)."""
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.iterdir()}
    assert sorted(committed) == sorted(demo_files)
    stale = [name for name, text in demo_files.items() if committed[name] != text]
    assert not stale, f"rerun `privmesh deploy render --out {COMMITTED}`: {stale} differ"


OTHER_OPTIONS = DeployOptions(
    demo_generator=True,
    kafka_ca_secret="kafka-ca",
    kafka_security="SSL",
    storage_class="fast-rwx",
    access_mode="ReadWriteOnce",
    api_replicas=1,
    namespace="mesh-prod",
)


@pytest.mark.parametrize("which", ["demo", "team", "other options"])
def test_every_object_is_valid_kubernetes(
    which: str, demo_files: dict[str, str], team_files: dict[str, str]
) -> None:
    """Every rendered object, Secret templates included, validates against the Kubernetes
    API schemas of the oldest and newest supported minor (strict: no unknown field)."""
    chosen = {"demo": demo_files, "team": team_files}.get(which)
    objs = objects(chosen if chosen is not None else render(demo(), OTHER_OPTIONS))
    assert len(objs) > 10
    for obj in objs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_kustomization_lists_every_file_but_the_secret_templates(
    demo_files: dict[str, str],
) -> None:
    """kubectl apply -k applies every rendered file except the Secret templates."""
    kustomization = yaml.safe_load(demo_files["kustomization.yaml"])
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(
        n for n in demo_files if n not in ("kustomization.yaml", "secrets.template.yaml")
    )
    assert all(text.startswith(GENERATED) for text in demo_files.values())


def test_per_domain_objects_of_a_new_team(team_files: dict[str, str]) -> None:
    """A folder with only two new domains renders their workers, SuperNodes (their tasks
    train together), retention jobs, claims and folders, and nothing of the demo mesh;
    '_' in a domain name becomes '-' in object names, not in labels or arguments."""
    objs = objects(team_files)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for domain in NEW_TEAM:
        name = k8s_name(domain)
        for kind, prefix in [
            ("Deployment", "worker-"),
            ("Deployment", "supernode-"),
            ("Service", "worker-"),
            ("CronJob", "retention-"),
            ("PersistentVolumeClaim", "privmesh-data-"),
            ("ConfigMap", "privmesh-domain-"),
            ("NetworkPolicy", "domain-"),
        ]:
            assert (kind, prefix + name) in names
    assert ("Deployment", "superlink") in names and ("Deployment", "api") in names
    assert not any("shop" in n for _, n in names)
    worker = next(o for o in objs if o["metadata"]["name"] == "worker-alpha-team")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker", "--domain", "alpha_team"]
    assert worker["spec"]["template"]["metadata"]["labels"][DOMAIN_LABEL] == "alpha_team"


def test_domain_state_is_on_the_domain_claim(demo_files: dict[str, str]) -> None:
    """No domain pod keeps its data directory in an emptyDir: worker, SuperNode and
    retention mount their own domain's claim; the API mounts each domain's offline store
    read-only."""
    objs = objects(demo_files)
    for name, template in pod_templates(objs):
        labels = template["metadata"]["labels"]
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        if DOMAIN_LABEL in labels:
            domain = k8s_name(labels[DOMAIN_LABEL])
            claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
            assert claim == f"privmesh-data-{domain}", name
    api = next(t for n, t in pod_templates(objs) if n == "api")
    mounts = api["spec"]["containers"][0]["volumeMounts"]
    offline = [m for m in mounts if m.get("subPath", "").startswith("features/")]
    assert len(offline) == 6 and all(m["readOnly"] for m in offline)


def test_domain_folders_rebuild_from_the_config_maps(
    tmp_path: Path, team_files: dict[str, str]
) -> None:
    """The projected volume lays the ConfigMaps out as the domain folders they came from:
    scanning the rebuilt folder finds the same domains with the same files and texts."""
    objs = objects(team_files)
    maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    worker = next(t for n, t in pod_templates(objs) if n == "worker-beta")
    volume = next(v for v in worker["spec"]["volumes"] if v["name"] == "domains")
    mount = next(
        m for m in worker["spec"]["containers"][0]["volumeMounts"] if m["name"] == "domains"
    )
    assert mount["mountPath"] == DOMAINS_DIR
    rebuilt = tmp_path / "rebuilt"
    for source in volume["projected"]["sources"]:
        data = maps[source["configMap"]["name"]]
        for item in source["configMap"]["items"]:
            path = rebuilt / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]], encoding="utf-8")
    original = new_team(tmp_path / "again")
    again = scan((rebuilt,))
    assert sorted(again.domains) == sorted(original.domains)
    for name, folder in again.domains.items():
        twin = original.domains[name]
        for mine, theirs in zip(_files(folder), _files(twin), strict=True):
            assert mine.relative_to(rebuilt) == theirs.relative_to(tmp_path / "again" / "mesh")
            assert mine.read_text(encoding="utf-8") == theirs.read_text(encoding="utf-8")


def _files(folder: DomainFolder) -> list[Path]:
    return [folder.contract_file, *folder.class_files, *folder.task_files, *folder.owners_files]


@pytest.mark.parametrize("which", ["demo", "team"])
def test_network_policies_keep_each_domain_to_itself(
    which: str, demo_files: dict[str, str], team_files: dict[str, str]
) -> None:
    """Default deny holds; every policy selecting a pod of domain A admits, in and out,
    no pod of another domain B (only A's own pods, the API, namespaces by name, or
    addresses outside the cluster)."""
    objs = objects(demo_files if which == "demo" else team_files, secrets=False)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert deny["spec"]["podSelector"] == {"matchLabels": {}}
    assert sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert deny["spec"]["ingress"] == [] and deny["spec"]["egress"] == []
    pods = [(n, t["metadata"]["labels"]) for n, t in pod_templates(objs)]
    domains = {labels[DOMAIN_LABEL] for _, labels in pods if DOMAIN_LABEL in labels}
    assert len(domains) >= 2
    checked = 0
    for name, labels in pods:
        mine = labels.get(DOMAIN_LABEL)
        if mine is None:
            continue
        others = [lab for _, lab in pods if lab.get(DOMAIN_LABEL) not in (None, mine)]
        for policy in policies:
            if not selects(policy["spec"]["podSelector"], labels):
                continue
            rules = [r.get("from", []) for r in policy["spec"].get("ingress", [])]
            rules += [r.get("to", []) for r in policy["spec"].get("egress", [])]
            for peers in rules:
                assert peers, f"{policy['metadata']['name']} admits every peer of {name}"
                for peer in peers:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        hit = [o for o in others if selects(peer["podSelector"], o)]
                        assert not hit, f"{policy['metadata']['name']}: {name} meets {hit[0]}"
                        checked += 1
    assert checked >= 2 * len(domains)


def test_api_reaches_only_what_it_must(demo_files: dict[str, str]) -> None:
    """The API's own policy: in from the ingress controller and Prometheus on its port;
    out to the workers' pages (posture) and to the stores' ports outside the cluster."""
    policy = next(
        o
        for o in objects(demo_files, secrets=False)
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "api"
    )
    ingress = policy["spec"]["ingress"]
    assert [p["port"] for r in ingress for p in r["ports"]] == [8000]
    egress = policy["spec"]["egress"]
    in_cluster = [peer for r in egress for peer in r["to"] if "podSelector" in peer]
    assert in_cluster == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "privmesh",
                                          "app.kubernetes.io/component": "worker"}}}
    ]  # fmt: skip


def test_pods_serving_metrics_carry_scrape_annotations(demo_files: dict[str, str]) -> None:
    """Every pod serving /metrics (the API, each worker) is annotated for Prometheus with
    the port it serves on, which its container declares."""
    seen = set()
    for name, template in pod_templates(objects(demo_files)):
        ports = {
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        annotations = template["metadata"].get("annotations", {})
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("api", "worker"):
            assert annotations["prometheus.io/scrape"] == "true", name
            assert int(annotations["prometheus.io/port"]) in ports
            assert annotations["prometheus.io/path"] == "/metrics"
            seen.add(component)
    assert seen == {"api", "worker"}


def test_ingress_publishes_every_route_but_metrics_and_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path the served app answers is under a prefix the Ingress publishes, except
    /metrics and /healthz, which stay inside the cluster."""
    from infra.api_app import app_from_settings

    folder = tmp_path / "mesh"
    scaffold_domain(folder, "north")
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(folder))
    monkeypatch.setenv("PRIVMESH_DATA_DIR", str(tmp_path / "data"))
    paths = set()
    for route in app_from_settings().routes:
        # FastAPI 0.165 includes routers lazily: their routes are the include's contexts.
        contexts = getattr(route, "effective_route_contexts", None)
        paths |= {c.path for c in contexts()} if contexts else {getattr(route, "path", "")}
    private = {"/metrics", "/healthz"}
    assert private <= paths
    for path in paths - private:
        assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in PUBLIC_PREFIXES), path
    assert not any("/metrics".startswith(p) or "/healthz".startswith(p) for p in PUBLIC_PREFIXES)


def test_secrets_are_placeholders_only(demo_files: dict[str, str]) -> None:
    """The Secret templates hold placeholders, never key material."""
    secrets = [o for o in objects(demo_files) if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} >= {"privmesh-secrets", "privmesh-tls"}
    for secret in secrets:
        for value in secret["stringData"].values():
            assert "REPLACE_ME" in value


def test_write_replaces_stale_generated_files_only(
    tmp_path: Path, team_files: dict[str, str]
) -> None:
    """A domain removed since the last render loses its file; other files stay."""
    (tmp_path / "domain-gone.yaml").write_text(f"{GENERATED}\nkind: x\n", encoding="utf-8")
    (tmp_path / "mine.yaml").write_text("kind: y\n", encoding="utf-8")
    write(team_files, tmp_path)
    assert not (tmp_path / "domain-gone.yaml").exists()
    assert (tmp_path / "mine.yaml").exists()
    assert (tmp_path / "domain-beta.yaml").read_text(encoding="utf-8") == team_files[
        "domain-beta.yaml"
    ]


EVIL = ["", "\x00", "a\x00b", "\ud800", "A" * 300, "Privmesh", "ns_1", "-x", "x-"]


@pytest.mark.parametrize(
    "option", ["namespace", "ingress_namespace", "monitoring_namespace", "host", "tls_secret"]
)
@pytest.mark.parametrize("value", EVIL)
def test_names_that_are_not_kubernetes_names_are_refused(option: str, value: str) -> None:
    """Names a Kubernetes object cannot carry are refused with a coded error."""
    with pytest.raises(InvalidDeployValue) as caught:
        DeployOptions(**{option: value})  # type: ignore[arg-type]
    assert caught.value.code == "invalid_deploy_value"
    assert "\x00" not in str(caught.value) and "\ud800" not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("api_replicas", 0),
        ("api_replicas", 10**30),
        ("api_replicas", True),
        ("worker_replicas", -1),
        ("storage_size", "10GB"),
        ("storage_size", "9" * 40 + "Gi"),
        ("storage_class", "\x00"),
        ("access_mode", "ReadMostly"),
        ("image", "privmesh:0.1.0 --privileged"),
        ("image", ""),
        ("kafka_bootstrap", "kafka:99999"),
        ("kafka_bootstrap", "kafka"),
        ("kafka_bootstrap", ""),
        ("kafka_partitions", 10**30),
        ("egress_cidr", "10.0.0.0/33"),
        ("egress_cidr", "\ud800"),
        ("store_ports", ()),
        ("store_ports", (0,)),
        ("store_ports", (70000,)),
        ("retention_schedule", "* * *"),
        ("retention_schedule", "17 * * * * ; rm -rf /"),
        ("kafka_security", "SASL_FOO"),
        ("kafka_sasl_mechanism", "GSSAPI"),
        ("kafka_ca_secret", "Bad Name"),
    ],
)
def test_bad_option_values_are_refused(option: str, value: object) -> None:
    """Out-of-range numbers and malformed values are refused before anything renders."""
    with pytest.raises(InvalidDeployValue, match="is not usable"):
        DeployOptions(**{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("domain", ["shop_", "Shop", "a-b", "", "\x00", "\ud800", "x" * 33])
def test_domain_names_that_cannot_be_kubernetes_names_are_refused(domain: str) -> None:
    """A domain whose name maps to no Kubernetes name (or is not a domain name at all)
    is refused with a coded error naming the fix."""
    with pytest.raises(InvalidDeployValue, match="rename"):
        k8s_name(domain)


@pytest.mark.parametrize(
    ("options", "domain"),
    [
        ({"tls_secret": "privmesh-secrets"}, "north"),
        ({"kafka_ca_secret": "privmesh-flower-ca"}, "north"),
        ({"demo_generator": True}, "generator"),
    ],
)
def test_objects_that_would_share_a_name_are_refused(
    tmp_path: Path, options: dict[str, Any], domain: str
) -> None:
    """An option or domain naming an object another one already is is refused."""
    folder = tmp_path / "mesh"
    scaffold_domain(folder, domain, ("other",))
    scaffold_domain(folder, "other", (domain,))
    found = scan((folder,))
    if domain == "generator":  # the scaffolded domain has no demo generator: give it one
        from streams import generator as demo_events

        demo_events.BUILDERS[("generator", "visits")] = demo_events.BUILDERS[("shop", "orders")]
        try:
            with pytest.raises(InvalidDeployValue, match="two objects would be"):
                render(found, DeployOptions(**options))
        finally:
            del demo_events.BUILDERS[("generator", "visits")]
        return
    with pytest.raises(InvalidDeployValue, match="two objects would be"):
        render(found, DeployOptions(**options))


def test_unmappable_domain_folder_is_refused(tmp_path: Path) -> None:
    """A domain folder whose name or file names cannot become Kubernetes names or
    ConfigMap keys is refused, naming the file, before anything is written."""
    folder = tmp_path / "mesh"
    scaffold_domain(folder, "north")
    (folder / "north" / "tasks" / "my task.yaml").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(InvalidDeployValue, match=r"my task\.yaml"):
        render(scan((folder,)))
    (folder / "north" / "tasks" / "my task.yaml").unlink()
    trailing = folder / "south_"
    scaffold_domain(tmp_path / "other", "south")
    (tmp_path / "other" / "south").rename(trailing)
    with pytest.raises(InvalidDeployValue, match="trailing"):
        render(scan((folder,)))


def test_cli_renders_a_new_team_folder_and_checks_it(tmp_path: Path) -> None:
    """End to end: `privmesh domains init` twice, then `privmesh deploy render` with
    PRIVMESH_DOMAIN_DIRS naming only that folder writes valid manifests of those two
    domains; --check passes on them and fails once a file is edited."""
    folder, out = tmp_path / "mesh", tmp_path / "k8s"
    for name, other in (NEW_TEAM, NEW_TEAM[::-1]):
        made = run_cli("domains", "init", name, "--dir", str(folder), "--train-with", other)
        assert made.returncode == 0, made.stderr
    env = {"PRIVMESH_DOMAIN_DIRS": str(folder)}
    result = run_cli("deploy", "render", "--out", str(out), "--api-replicas", "3", env=env)
    assert result.returncode == 0, result.stderr
    files = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}
    assert {"domain-alpha-team.yaml", "domain-beta.yaml", "federation.yaml"} <= set(files)
    api = next(
        o for o in objects(files) if o["kind"] == "Deployment" and o["metadata"]["name"] == "api"
    )
    assert api["spec"]["replicas"] == 3
    assert (
        run_cli(
            "deploy", "render", "--out", str(out), "--api-replicas", "3", "--check", env=env
        ).returncode
        == 0
    )
    (out / "api.yaml").write_text(files["api.yaml"].replace("replicas: 3", "replicas: 1"))
    stale = run_cli(
        "deploy", "render", "--out", str(out), "--api-replicas", "3", "--check", env=env
    )
    assert stale.returncode == 1 and "api.yaml" in stale.stdout + stale.stderr


def test_cli_refuses_a_bad_value_in_one_line() -> None:
    """A bad option is one line with its code, before the domains are read."""
    result = run_cli("deploy", "render", "--namespace", "Not_A_Name", "--out", "/nonexistent/x")
    assert_one_line_error(result, "--namespace", "invalid_deploy_value")


def test_kubernetes_scrape_config_reads_the_rendered_annotations(
    demo_files: dict[str, str],
) -> None:
    """The Prometheus configuration for Kubernetes keeps pods by the annotations the
    generator writes, in the namespace it renders."""
    config = yaml.safe_load(
        (COMMITTED.parent / "observability" / "prometheus-kubernetes.yml").read_text("utf-8")
    )
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [DeployOptions().namespace]
    sources = {s for rule in job["relabel_configs"] for s in rule["source_labels"]}
    annotated = {
        key
        for _, template in pod_templates(objects(demo_files))
        for key in template["metadata"].get("annotations", {})
    }
    assert annotated
    for key in annotated:
        meta = "__meta_kubernetes_pod_annotation_" + key.replace(".", "_").replace("/", "_")
        assert meta in sources, key


def test_flat_contracts_folder_is_refused(tmp_path: Path) -> None:
    """Contracts of the deprecated flat folder borrow the demo domains' files, which no
    ConfigMap can reproduce: refused, naming the domain folders to use instead."""
    flat = tmp_path / "contracts"
    flat.mkdir()
    (flat / "shop.yaml").write_text(
        (DEMO_DOMAINS_DIR / "shop" / "contract.yaml").read_text("utf-8"), encoding="utf-8"
    )
    with pytest.raises(InvalidDeployValue, match="PRIVMESH_DOMAIN_DIRS"):
        render(scan((), flat))
