"""Static checks of docker/: no Docker engine runs on the machines this is developed on.

The compose file is parsed and checked against what the installed Flower CLIs accept,
against the files `docker/generate-certs.sh` writes, and for consistency between each
SuperNode and its SuperExec; the Dockerfile is checked against the repository.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args

from sfdd_lab.launch import flower_command, generate_credentials

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
FLWR_VERSION = importlib.metadata.version("flwr")
ENTRYPOINTS = {"superlink": "flower-superlink", "supernode": "flower-supernode", "superexec": "flower-superexec"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def accepted_flags() -> dict[str, set[str]]:
    """The long options each Flower entry point accepts (from its --help)."""
    flags = {}
    for entrypoint in set(ENTRYPOINTS.values()):
        result = subprocess.run([flower_command(entrypoint), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        flags[entrypoint] = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", result.stdout))
    return flags


def default_of(value: str) -> str:
    """Compose interpolation with defaults only: '${X:-a}b' -> 'ab'."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def kind(name: str, service: dict) -> str:
    image = default_of(service.get("image", ""))
    for kind_name in ENTRYPOINTS:
        if image.startswith(f"flwr/{kind_name}:") or (kind_name == "superexec" and "build" in service):
            return kind_name
    raise AssertionError(f"{name}: unexpected image {image!r}")


def options(service: dict) -> dict[str, str]:
    parsed = {}
    for argument in service["command"]:
        flag, _, value = default_of(argument).partition("=")
        assert flag.startswith("--"), argument
        parsed[flag] = value
    return parsed


def test_the_federation_has_a_superlink_a_serverapp_superexec_and_three_hospitals(compose):
    expected = {"superlink", "superexec-serverapp"}
    expected |= {f"{part}-{name}" for name in HOSPITALS for part in ("supernode", "superexec")}
    assert set(compose["services"]) == expected
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_official_flower_images_of_the_installed_version_are_used(compose):
    for name, service in compose["services"].items():
        image = default_of(service["image"])
        if kind(name, service) == "superexec":
            assert service["build"]["args"]["FLWR_VERSION"] == "${FLWR_VERSION:-" + FLWR_VERSION + "}"
        else:
            assert image == f"flwr/{kind(name, service)}:{FLWR_VERSION}", name
    dockerfile = (DOCKER / "superexec.Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={FLWR_VERSION}" in dockerfile
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["flower-superexec"]' in dockerfile


def test_every_flag_is_one_the_installed_flower_accepts(compose, accepted_flags):
    for name, service in compose["services"].items():
        entrypoint = ENTRYPOINTS[kind(name, service)]
        unknown = set(options(service)) - accepted_flags[entrypoint]
        assert not unknown, f"{name}: {entrypoint} does not accept {sorted(unknown)}"


def test_tls_node_auth_and_superexec_secrets_are_on(compose):
    services = compose["services"]
    link = options(services["superlink"])
    assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"} <= set(link)
    assert "--insecure" not in link and link["--isolation"] == "process"
    assert link["--port"] == "8000" and services["superlink"]["ports"] == ["${SUPERLINK_PORT:-8000}:8000"]
    serverapp = options(services["superexec-serverapp"])
    assert serverapp["--runtime-api-address"] == "superlink:8000" and "--root-certificates" in serverapp
    assert "--superexec-auth-secret-file" in link and "--superexec-auth-secret-file" in serverapp
    for name in HOSPITALS:
        node = options(services[f"supernode-{name}"])
        assert node["--superlink"] == "superlink:8000" and node["--isolation"] == "process"
        assert {"--root-certificates", "--auth-supernode-private-key", "--superexec-auth-secret-file"} <= set(node)
        assert "--insecure" not in node


def test_each_hospital_superexec_serves_its_own_supernode_with_its_own_data(compose):
    services = compose["services"]
    for name in HOSPITALS:
        node, executor = services[f"supernode-{name}"], services[f"superexec-{name}"]
        node_config = parse_config_args([options(node)["--node-config"]])
        assert node_config["node-name"] == name
        assert options(executor)["--runtime-api-address"] == f"supernode-{name}:{options(node)['--port']}"
        data_mounts = {default_of(volume).split(":")[1]: volume for volume in executor["volumes"]}
        mount = data_mounts[node_config["data-dir"]]
        variable = f"HOSPITAL_{name.removeprefix('hospital-').upper()}_DATA"
        assert mount == f"${{{variable}:-./data/{name}}}:{node_config['data-dir']}:ro", mount
    outputs = [v for v in services["superexec-serverapp"]["volumes"] if ":/srv/sfdd-outputs" in v]
    assert outputs == ["${SFDD_OUTPUTS:-./outputs}:/srv/sfdd-outputs"]


def test_every_certificate_key_and_secret_a_command_names_is_written_by_generate_certs(compose, tmp_path):
    credentials = generate_credentials(tmp_path / "certs", list(HOSPITALS))
    for name, service in compose["services"].items():
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = default_of(volume).split(":")[:2]
            if source.startswith("./certs/"):
                mounts[target] = credentials.root / source.removeprefix("./certs/")
        for flag, value in options(service).items():
            if not value.startswith("/app/certs/"):
                continue
            mount = next((t for t in mounts if value == t or value.startswith(t + "/")), None)
            assert mount is not None, f"{name} {flag}={value} is not mounted"
            host_path = mounts[mount] / Path(value).relative_to(mount) if value != mount else mounts[mount]
            assert host_path.is_file(), f"{name} {flag}={value}: {host_path} is not written by generate-certs.sh"


def test_the_superexec_image_installs_exactly_the_apps_dependencies():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [d for d in dependencies if not d.startswith("flwr")]
    listed = [line.strip() for line in (DOCKER / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed == wanted
    dockerfile = (DOCKER / "superexec.Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).is_file(), f"COPY {source}: not in the build context (the repository root)"


def test_generate_certs_is_an_executable_bash_script():
    script = DOCKER / "generate-certs.sh"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "generate-certs.sh [-o OUT_DIR]" in usage.stdout
