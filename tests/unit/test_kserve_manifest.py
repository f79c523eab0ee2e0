"""The KServe manifests of infra/kserve/ fit KServe and the project's own command line.

KServe is not run here: these checks read the YAML the way a reviewer would (the kind, the
ports KServe maps, the probe paths, where every secret comes from) and parse the
container's arguments with the real ``scoring serve`` without starting it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from scoring.cli import app
from scoring.masking import SECRET_VARIABLES
from scoring.settings import PROJECT_ROOT
from scoring.stream.kafka_config import is_secret, read_properties
from typer.testing import CliRunner

assert PROJECT_ROOT is not None, "the tests run from a checkout"
FOLDER = PROJECT_ROOT / "infra" / "kserve"
# Environment variables whose value is a secret: they must come from a Secret.
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL|_KEY$|TRACKING_URI")
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def documents() -> list[dict[str, Any]]:
    """Every YAML document of the folder."""
    return [
        document
        for path in sorted(FOLDER.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def the(kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == kind]
    return found


@pytest.fixture
def service() -> dict[str, Any]:
    return the("InferenceService")


@pytest.fixture
def container(service: dict[str, Any]) -> dict[str, Any]:
    (only,) = service["spec"]["predictor"]["containers"]
    return only


def options(args: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a command line (every option of serve takes a value)."""
    flags = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--")}
    assert all(not v.startswith("--") for v in flags.values()), args
    return flags


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_an_inference_service_with_a_custom_predictor(
    service: dict[str, Any], container: dict[str, Any]
) -> None:
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    # Two ports on one container: Knative (KServe's other mode) allows one.
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert container["name"] == "kserve-container"
    assert container["image"]
    # Kubernetes takes strings only: an unquoted 8080 would make the manifest invalid.
    assert all(isinstance(a, str) for a in container["command"] + container["args"])
    assert container["command"] == ["scoring"]
    assert container["args"][:2] == ["serve", "models:/fraud@champion"]
    flags = options(container["args"][2:])
    assert flags["--host"] == "0.0.0.0"
    assert (flags["--http-port"], flags["--grpc-port"]) == ("8080", "8081")


def test_rest_first_and_grpc_declared_as_kserve_expects(container: dict[str, Any]) -> None:
    ports = container["ports"]
    # KServe's Service maps port 80 to the first port; a name with h2c marks gRPC.
    assert [(p["name"], p["containerPort"]) for p in ports] == [("http1", 8080), ("h2c", 8081)]
    assert {p.get("protocol", "TCP") for p in ports} == {"TCP"}


def test_probes_read_the_protocols_health_endpoints(container: dict[str, Any]) -> None:
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert probes == {
        "readinessProbe": ("/v2/health/ready", 8080),
        "livenessProbe": ("/v2/health/live", 8080),
        "startupProbe": ("/v2/health/live", 8080),
    }


def test_sized_for_two_cores(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert cores(resources["requests"]["cpu"]) == cores(resources["limits"]["cpu"]) == 2
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_no_secret_is_written_in_the_folder(container: dict[str, Any]) -> None:
    assert "Secret" not in {d["kind"] for d in documents()}
    env = {e["name"]: e for e in container["env"]}
    for name in (*SECRET_VARIABLES, "SCORING_SERVE_TOKEN", "MLFLOW_TRACKING_URI"):
        assert name not in env or "secretKeyRef" in env[name]["valueFrom"], name
    for name, entry in env.items():
        if SECRET_NAME.search(name):
            assert "value" not in entry, f"{name} is written inline"
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == "scoring-serve" and reference["key"], name


def test_the_kafka_file_comes_from_the_config_map_and_its_secrets_from_the_secret(
    service: dict[str, Any], container: dict[str, Any], tmp_path: Path
) -> None:
    path = Path(options(container["args"][2:])["--kafka-config"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    volumes = {v["name"]: v for v in service["spec"]["predictor"]["volumes"]}
    config_map = the("ConfigMap")
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == config_map["metadata"]["name"]
    assert [i["path"] for i in source["items"]] == [path.name]
    text = config_map["data"][source["items"][0]["key"]]

    # Every secret property names a variable the container gets from the Secret.
    references = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if not line.startswith("#") and is_secret(key.strip()):
            variable = re.fullmatch(r"\$\{(\w+)\}", value.strip())
            assert variable, f"{key.strip()} is written inline"
            references[key.strip()] = variable.group(1)
    assert references == {"sasl.password": "KAFKA_PASSWORD"}
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["KAFKA_PASSWORD"]["valueFrom"]

    # And the project's own reader takes the file (the CA path is the image's).
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    copy = tmp_path / path.name
    copy.write_text(re.sub(r"(?m)^ssl\.ca\.location=.*$", f"ssl.ca.location={ca}", text))
    properties = read_properties(copy, {"KAFKA_PASSWORD": "from-the-secret"})
    assert properties["sasl.password"] == "from-the-secret"


def test_the_container_args_are_options_of_scoring_serve(container: dict[str, Any]) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    if shown.exit_code != 0 and "No such command" in shown.output:
        pytest.skip("`scoring serve` is not a command of the CLI yet: nothing to check against")
    assert shown.exit_code == 0, shown.output
    args = container["args"][1:]
    assert set(options(args)) <= set(OPTION.findall(shown.output))

    # Parsed by the real command (its types and its argument), without starting it.
    root = typer.main.get_command(app)
    group_context = root.make_context("scoring", ["serve"])
    serve = root.get_command(group_context, "serve")  # type: ignore[attr-defined]
    parsed = serve.make_context("serve", list(args), parent=group_context).params
    assert parsed["model_uri"] == "models:/fraud@champion"
    assert (parsed["host"], parsed["http_port"], parsed["grpc_port"]) == ("0.0.0.0", 8080, 8081)
