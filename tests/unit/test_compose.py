"""docker-compose.yml cannot run here; keep it consistent with the code and with the
deployment rules instead: nothing published beyond 127.0.0.1, no default passwords, health
checks behind every `depends_on`, pinned versions, fake traffic only with `--profile demo`,
Grafana alerts handed to Alertmanager in its own format."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from llmpulse.cli import app
from llmpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
PROVISIONING = ROOT / "dashboards" / "provisioning"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "INTEGRATION_KEY", "SLACK_WEBHOOK_URL")
LONG_RUNNING = ("kafka", "clickhouse", "worker", "alertmanager", "alert-log", "grafana")
CLUSTER_SERVICES = ("clickhouse-keeper", "clickhouse-1", "clickhouse-2")  # profile `cluster`
CLUSTER_DIR = ROOT / "deploy" / "clickhouse-cluster"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_TEXT)


def _services() -> dict:
    return _compose()["services"]


def _interpolate(node, env: dict[str, str]):
    """Compose's variable substitution in the parsed file's strings, enough for this file:
    a required variable that is unset or empty raises with the file's own message."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise LookupError(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""
    return VAR.sub(sub, node)


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_the_stack_has_every_component() -> None:
    services = _services()
    assert {"kafka", "clickhouse", "migrate", "worker", "traffic", "alertmanager", "alert-log",
            "grafana"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_llmpulse_env_names_are_real_settings() -> None:
    fields = {f"LLMPULSE_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "traffic", "migrate"):
        env = _services()[name]["environment"]
        assert set(env) <= fields, set(env) - fields


def test_commands_exist_and_mounted_files_are_in_the_repo() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in ("worker", "traffic", "migrate"):
        assert _services()[name]["command"][0] in commands
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


# ------------------------------------------------------------------ what is published


def test_host_ports_bind_to_loopback_only() -> None:
    published = {}
    for name, service in _services().items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            published[name] = published.get(name, []) + [int(parts[1])]
    # Alertmanager has no auth: it is reached through Grafana, never from the host.
    assert "alertmanager" not in published and "alert-log" not in published
    assert "worker" not in published
    assert published.get("kafka") == [9094] and published.get("grafana") == [3000]
    assert published.get("clickhouse", [8123]) == [8123]


def test_kafka_has_an_in_network_and_a_host_listener() -> None:
    env = _services()["kafka"]["environment"]
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) <= set(listeners) <= set(protocols)
    assert advertised["PLAINTEXT"] == "kafka:9092"
    external = advertised["EXTERNAL"]
    assert external.startswith("127.0.0.1:")
    port = external.split(":")[1]
    assert f"127.0.0.1:{port}:{port}" in _services()["kafka"]["ports"]
    in_network = _compose()["x-llmpulse-env"]["LLMPULSE_KAFKA_BOOTSTRAP"]
    assert in_network == advertised["PLAINTEXT"]


# ------------------------------------------------------------------ secrets


def test_no_default_passwords() -> None:
    for m in VAR.finditer(COMPOSE_TEXT):
        name, op, arg = m.groups()
        if "PASSWORD" in name:
            assert op == ":?" and ".env" in arg and "README" in arg, f"${{{name}}} must be required: {m.group(0)}"
        elif any(w in name for w in SECRET_WORDS):
            # optional paging secrets default to empty, never to a value
            assert op in (":-", None) and not arg, m.group(0)
    for name, service in _services().items():
        env = service.get("environment", {})
        env = env if isinstance(env, dict) else {}
        for key, value in env.items():
            if any(w in key for w in SECRET_WORDS):
                assert isinstance(value, str) and value.startswith("${"), f"{name}.{key} holds a literal secret"


def test_without_env_compose_names_the_missing_variable() -> None:
    with pytest.raises(LookupError, match=r"CLICKHOUSE_PASSWORD.*set CLICKHOUSE_PASSWORD in \.env, see README"):
        _interpolate(_compose(), {})


def test_gen_env_sets_every_required_variable_with_fresh_secrets(tmp_path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    for out in (first, second):
        subprocess.run(["sh", str(ROOT / "deploy" / "gen-env.sh"), str(out)], check=True, capture_output=True)
    assert first.stat().st_mode & 0o077 == 0, "the .env holds secrets: mode 600"
    env_a, env_b = _env_file(first), _env_file(second)
    rendered = _interpolate(_compose(), env_a)  # no required variable left unset
    required = {m.group(1) for m in VAR.finditer(COMPOSE_TEXT) if m.group(2) in (":?", "?")}
    for name in required:
        assert len(env_a[name]) >= 32 and env_a[name] != env_b[name], name
    assert rendered["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # a second run refuses to overwrite secrets in use
    again = subprocess.run(["sh", str(ROOT / "deploy" / "gen-env.sh"), str(first)], capture_output=True)
    assert again.returncode != 0 and _env_file(first) == env_a
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_grafana_has_no_anonymous_access_unless_asked() -> None:
    env = _services()["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS:-false}"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_grafana_reads_clickhouse_as_a_readonly_user_from_the_compose_network() -> None:
    users = ET.parse(ROOT / "deploy" / "clickhouse" / "users.d" / "grafana_ro.xml").getroot()
    user = users.find("users/grafana_ro")
    profile = users.find(f"profiles/{user.findtext('profile')}")
    # readonly=2: no writes, but Grafana's plugin may set max_execution_time (readonly=1 refuses)
    assert profile.findtext("readonly") == "2"
    assert profile.find("constraints/max_execution_time/max") is not None
    assert [g.text for g in user.findall("grants/query")] == ["GRANT SELECT ON llmpulse.*"]
    assert user.find("password").get("from_env") == "LLMPULSE_GRAFANA_CH_PASSWORD"
    ips = user.findall("networks/ip")
    assert len(ips) == 1 and ips[0].get("from_env") == "LLMPULSE_GRAFANA_RO_NETWORK" and not user.findall("networks/host")
    ch_env = _services()["clickhouse"]["environment"]
    ipam = _compose()["networks"]["default"]["ipam"]["config"][0]
    assert ch_env["LLMPULSE_GRAFANA_RO_NETWORK"] == ipam["ip_range"]  # the same ${COMPOSE_IP_RANGE:-...}
    # containers' addresses only: inside the subnet, without the gateway (its first address),
    # where connections to the published 127.0.0.1:8123 come from
    subnet = ipaddress.ip_network(_interpolate(ipam["subnet"], {}))
    ip_range = ipaddress.ip_network(_interpolate(ipam["ip_range"], {}))
    assert ip_range.subnet_of(subnet) and next(subnet.hosts()) not in ip_range
    grafana = _services()["grafana"]["environment"]
    assert grafana["LLMPULSE_GRAFANA_CH_USER"] == "grafana_ro"
    assert grafana["LLMPULSE_GRAFANA_CH_PASSWORD"] == ch_env["LLMPULSE_GRAFANA_CH_PASSWORD"]


# ------------------------------------------------------------------ start order, data, versions


def test_long_running_services_have_healthchecks_and_restart() -> None:
    for name in LONG_RUNNING:
        service = _services()[name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_depends_on_waits_for_health() -> None:
    services = _services()
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            condition = spec.get("condition")
            if dep == "migrate":
                assert condition == "service_completed_successfully", name
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_data_lives_in_volumes() -> None:
    services, volumes = _services(), set(_compose()["volumes"])
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])} for name, s in services.items()}
    assert mounts["kafka"][services["kafka"]["environment"]["KAFKA_LOG_DIRS"]] in volumes
    assert services["kafka"]["environment"]["CLUSTER_ID"]  # formatted once, same id on restart
    assert mounts["clickhouse"]["/var/lib/clickhouse"] in volumes
    assert mounts["grafana"]["/var/lib/grafana"] in volumes
    assert mounts["alertmanager"]["/alertmanager"] in volumes


def test_images_and_plugins_are_pinned() -> None:
    for name, service in _services().items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            # a release, not a moving line tag (latest, 25.8, lts)
            assert image and re.fullmatch(r"v?\d+\.\d+\.\d+(\.\d+)*", tag), f"{name}: {service['image']} is not pinned"
        else:
            assert service["build"] == "."
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+[\w.-]*", base), base
    plugins = _services()["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    for plugin in plugins.split(","):
        assert re.fullmatch(r"[\w-]+@\d+\.\d+\.\d+", plugin.strip()), plugin
    assert "grafana-clickhouse-datasource@" in plugins


def test_fake_traffic_is_opt_in() -> None:
    for name, service in _services().items():
        expected = ["demo"] if name == "traffic" else ["cluster"] if name in CLUSTER_SERVICES else []
        assert service.get("profiles", []) == expected, name


# ------------------------------------------------------------------ alerting path


def _provisioning(rel: str) -> dict:
    return yaml.safe_load((PROVISIONING / rel).read_text())


def test_grafana_alerts_go_to_alertmanager_in_its_format() -> None:
    points = _provisioning("alerting/contact-points.yaml")["contactPoints"]
    receivers = [r for cp in points for r in cp["receivers"]]
    # Grafana's Alertmanager integration posts v2 postableAlerts; a webhook posts Grafana's JSON (400)
    assert [r["type"] for r in receivers] == ["prometheus-alertmanager"]
    assert receivers[0]["settings"]["url"] == "${LLMPULSE_ALERTMANAGER_URL}"
    policy = _provisioning("alerting/policies.yaml")["policies"][0]
    assert policy["receiver"] == points[0]["name"] and not policy.get("routes")
    grafana = _services()["grafana"]["environment"]
    assert grafana["LLMPULSE_ALERTMANAGER_URL"] == _compose()["x-llmpulse-env"]["LLMPULSE_ALERTMANAGER_URL"]
    assert grafana["LLMPULSE_ALERTMANAGER_URL"] == "http://alertmanager:9093"


def test_every_variable_the_provisioning_files_use_is_set_for_grafana() -> None:
    env = _services()["grafana"]["environment"]
    for path in sorted(PROVISIONING.glob("**/*.yaml")):
        for name in re.findall(r"\$\{(\w+)\}", path.read_text()):
            assert name in env, f"{path.relative_to(ROOT)} uses ${{{name}}}, which grafana's environment never sets"


def test_alertmanager_runs_the_shipped_config_with_optional_secrets() -> None:
    am = _services()["alertmanager"]
    assert am["entrypoint"] == ["/bin/sh", "/etc/llmpulse/alertmanager/entrypoint.sh"]
    assert "./deploy/alertmanager:/etc/llmpulse/alertmanager:ro" in am["volumes"]
    env = am["environment"]
    assert env["PAGERDUTY_INTEGRATION_KEY"] == "${PAGERDUTY_INTEGRATION_KEY:-}"
    assert env["SLACK_WEBHOOK_URL"] == "${SLACK_WEBHOOK_URL:-}"
    assert env["LLMPULSE_BUSINESS_TZ"] == "${LLMPULSE_BUSINESS_TZ:-UTC}"
    assert env["AM_RUN_DIR"] in am["tmpfs"]  # secret files never reach a volume or the image
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    hosts = {c["url"].split("/")[2] for r in config["receivers"] for c in r.get("webhook_configs", [])}
    assert hosts == {"alert-log:8080"} and "alert-log" in _services()


def test_readme_docker_section_matches_the_compose_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## With Docker", 1)[1].split("\n## ", 1)[0]
    published = {str(p).split(":")[1] for s in _services().values() for p in s.get("ports", [])}
    assert set(re.findall(r"127\.0\.0\.1:(\d+)", section)) == published
    gen_env = (ROOT / "deploy" / "gen-env.sh").read_text()
    for name in set(re.findall(r"`([A-Z][A-Z0-9_]{3,})(?:=[^`]*)?`", section)):
        assert name in COMPOSE_TEXT or name in gen_env, f"README names {name}, which the stack never reads"
    for command in ("deploy/gen-env.sh", "--profile demo", "alert-log"):
        assert command in section


def test_worker_serves_metrics_on_the_network_and_its_healthcheck_is_readiness() -> None:
    worker = _services()["worker"]
    assert worker["environment"]["LLMPULSE_WORKER_WEB_HOST"] == "0.0.0.0"
    assert not worker["environment"].get("LLMPULSE_QUERY_TOKEN")  # /query/ stays local-only
    probe = " ".join(worker["healthcheck"]["test"])
    assert "/readyz" in probe and f":{Settings().worker_web_port}/" in probe


# ------------------------------------------------------------------ profile `cluster`


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> repo file of a service's bind mounts."""
    out = {}
    for volume in _services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = ROOT / source
    return out


def test_cluster_services_are_healthy_pinned_and_keep_data_in_volumes() -> None:
    services, volumes = _services(), set(_compose()["volumes"])
    assert {n for n, s in services.items() if s.get("profiles") == ["cluster"]} == set(CLUSTER_SERVICES)
    for name in CLUSTER_SERVICES:
        service = services[name]
        assert service.get("healthcheck", {}).get("test") and service.get("restart") == "unless-stopped", name
        assert service["image"] == services["clickhouse"]["image"], name  # one ClickHouse release everywhere
        assert "ports" not in service, f"{name} is reached on the compose network only"
        data = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if not v.startswith("./")}
        assert set(data.values()) <= volumes and data, name
    for node in ("clickhouse-1", "clickhouse-2"):
        assert services[node]["depends_on"] == {"clickhouse-keeper": {"condition": "service_healthy"}}
        assert "system.zookeeper" in " ".join(services[node]["healthcheck"]["test"])  # Keeper reached, not only up
        # the same users as the single server (grafana_ro), read from the same variables
        assert services[node]["environment"] == {**services["clickhouse"]["environment"],
                                                 "CLICKHOUSE_PASSWORD": services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]}
    for dep in ("clickhouse-1", "clickhouse-2"):
        assert services["migrate"]["depends_on"][dep] == {"condition": "service_healthy", "required": False}


def test_cluster_config_matches_the_services() -> None:
    services = _services()
    config = ET.parse(CLUSTER_DIR / "config.d" / "cluster.xml").getroot()
    clusters = config.find("remote_servers")
    assert [c.tag for c in clusters] == ["llmpulse"]
    cluster = clusters.find("llmpulse")
    # nodes authenticate with a secret from the environment, never a password written here
    assert cluster.find("secret").get("from_env") == "CLICKHOUSE_PASSWORD" and not cluster.find("secret").text
    assert not config.findall(".//password") and not config.findall(".//user")
    shards = cluster.findall("shard")
    hosts = [[(r.findtext("host"), int(r.findtext("port"))) for r in shard.findall("replica")] for shard in shards]
    assert hosts == [[("clickhouse-1", 9000)], [("clickhouse-2", 9000)]]  # two shards x one replica
    assert all(shard.findtext("internal_replication") == "true" for shard in shards)
    replicas = []
    for number, shard in enumerate(hosts, start=1):
        for host, _ in shard:
            mounts = _mounts(host)
            assert mounts["/etc/clickhouse-server/config.d/cluster.xml"] == CLUSTER_DIR / "config.d" / "cluster.xml"
            assert "/etc/clickhouse-server/users.d/distributed_inserts.xml" in mounts
            macros = ET.parse(mounts["/etc/clickhouse-server/config.d/macros.xml"]).getroot().find("macros")
            assert int(macros.findtext("shard")) == number, host  # its place in remote_servers
            replicas.append(macros.findtext("replica"))
            assert "CLICKHOUSE_PASSWORD" in services[host]["environment"]  # the secret's from_env
    assert replicas == ["clickhouse-1", "clickhouse-2"]  # unique cluster-wide (schema_migrations)
    # Keeper: where the nodes look for it is where it listens, and its probe is its HTTP port
    node = config.find("zookeeper/node")
    keeper = ET.parse(_mounts("clickhouse-keeper")["/etc/clickhouse-keeper/keeper_config.xml"]).getroot()
    server = keeper.find("keeper_server")
    assert node.findtext("host") == "clickhouse-keeper" and node.findtext("port") == server.findtext("tcp_port")
    assert [s.findtext("hostname") for s in server.findall("raft_configuration/server")] == ["clickhouse-keeper"]
    assert server.findtext("server_id") == server.findtext("raft_configuration/server/id")
    probe = " ".join(services["clickhouse-keeper"]["healthcheck"]["test"])
    assert f"localhost:{server.findtext('http_control/port')}/ready" in probe
    data = {v.split(":")[1] for v in services["clickhouse-keeper"]["volumes"] if not v.startswith("./")}
    assert Path(server.findtext("log_storage_path")).is_relative_to(*data)
    assert Path(server.findtext("snapshot_storage_path")).is_relative_to(*data)
    foreground = ET.parse(CLUSTER_DIR / "users.d" / "distributed_inserts.xml").getroot()
    assert foreground.findtext("profiles/default/distributed_foreground_insert") == "1"


def test_the_stack_uses_the_cluster_when_env_says_so_and_one_server_otherwise(tmp_path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run(["sh", str(ROOT / "deploy" / "gen-env.sh"), str(env_file)], check=True, capture_output=True)
    single = _interpolate(_compose(), _env_file(env_file))
    env = single["x-llmpulse-env"]
    assert env["LLMPULSE_CLICKHOUSE_DSN"] == "http://clickhouse:8123" and env["LLMPULSE_CLICKHOUSE_CLUSTER"] == ""
    assert single["services"]["grafana"]["environment"]["LLMPULSE_CLICKHOUSE_HOST"] == "clickhouse"
    # the three lines README "ClickHouse cluster" and this file's header say to add to .env
    readme = (ROOT / "README.md").read_text().split("### ClickHouse cluster", 1)[1].split("\n## ", 1)[0]
    lines = dict(re.findall(r"^(COMPOSE_PROFILES|CLICKHOUSE_HOST|CLICKHOUSE_CLUSTER)=(\S+)$", readme, re.M))
    assert lines == {"COMPOSE_PROFILES": "cluster", "CLICKHOUSE_HOST": "clickhouse-1", "CLICKHOUSE_CLUSTER": "llmpulse"}
    for name, value in lines.items():
        assert f"{name}={value}" in COMPOSE_TEXT.split("services:")[0]
    clustered = _interpolate(_compose(), {**_env_file(env_file), **lines})
    env = clustered["x-llmpulse-env"]
    host = env["LLMPULSE_CLICKHOUSE_DSN"].split("//")[1].split(":")[0]
    assert host in CLUSTER_SERVICES and host == clustered["services"]["grafana"]["environment"]["LLMPULSE_CLICKHOUSE_HOST"]
    names = [c.tag for c in ET.parse(CLUSTER_DIR / "config.d" / "cluster.xml").getroot().find("remote_servers")]
    settings = Settings(clickhouse_dsn=env["LLMPULSE_CLICKHOUSE_DSN"], clickhouse_cluster=env["LLMPULSE_CLICKHOUSE_CLUSTER"])
    assert settings.clickhouse_cluster in names and not settings.embedded
