"""Consistency checks for the deployment files (docker-compose.yml, Dockerfile).

No Docker engine is needed: the files are parsed and cross-checked against
each other and against the service's settings class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENV_PREFIX = "GMEM_BROKER_"


# -- helpers -----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services")
    assert isinstance(services, dict), "compose file has no services mapping"
    service = services.get(name)
    assert isinstance(service, dict), f"compose file has no {name!r} service"
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either the mapping or the list form."""
    env = service.get("environment", {})
    if isinstance(env, list):
        result: dict[str, str] = {}
        for item in env:
            key, _, value = str(item).partition("=")
            result[key] = value
        return result
    assert isinstance(env, dict), "environment must be a mapping or a list"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _port_targets(service: dict[str, Any]) -> list[int]:
    """Container-side ports of a service's `ports` (short or long syntax)."""
    targets: list[int] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            targets.append(int(entry["target"]))
        else:
            # [ip:][published:]target[/proto]
            spec = str(entry).split("/", 1)[0]
            targets.append(int(spec.rsplit(":", 1)[-1]))
    return targets


def _dockerfile_instructions() -> list[Instruction]:
    """Dockerfile instructions, with comments dropped and continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def _only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"Dockerfile has no {keyword}"
    # Docker uses the last one.
    return found[-1]


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()


@pytest.fixture(scope="module")
def broker(compose: dict[str, Any]) -> dict[str, Any]:
    return _service(compose, "broker")


@pytest.fixture(scope="module")
def postgres(compose: dict[str, Any]) -> dict[str, Any]:
    return _service(compose, "postgres")


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return _dockerfile_instructions()


# -- docker-compose.yml --------------------------------------------------------


def test_broker_waits_for_healthy_postgres(broker: dict[str, Any]) -> None:
    depends_on = broker.get("depends_on")
    assert isinstance(depends_on, dict), "broker.depends_on must use the long form to carry a condition"
    assert "postgres" in depends_on
    assert depends_on["postgres"].get("condition") == "service_healthy"


def test_postgres_has_healthcheck(postgres: dict[str, Any]) -> None:
    healthcheck = postgres.get("healthcheck")
    assert isinstance(healthcheck, dict), "postgres needs a healthcheck"
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert test, "postgres healthcheck has no test"
    command = test if isinstance(test, str) else " ".join(map(str, test))
    assert "pg_isready" in command


def test_postgres_data_on_declared_named_volume(compose: dict[str, Any], postgres: dict[str, Any]) -> None:
    declared = compose.get("volumes") or {}
    assert isinstance(declared, dict)
    mounts: dict[str, str] = {}
    for entry in postgres.get("volumes", []):
        if isinstance(entry, dict):
            mounts[str(entry["target"])] = str(entry.get("source", ""))
        else:
            source, _, rest = str(entry).partition(":")
            mounts[rest.split(":", 1)[0]] = source
    data_dir = "/var/lib/postgresql/data"
    assert data_dir in mounts, f"postgres has no volume at {data_dir}"
    assert mounts[data_dir] in declared, f"volume {mounts[data_dir]!r} is not declared under top-level volumes"


def test_broker_port_target_matches_settings_port(broker: dict[str, Any]) -> None:
    env = _environment(broker)
    assert f"{ENV_PREFIX}PORT" in env
    assert _port_targets(broker) == [int(env[f"{ENV_PREFIX}PORT"])]


def test_broker_listens_on_all_interfaces(broker: dict[str, Any]) -> None:
    # A loopback bind inside the container would be unreachable via the port map.
    assert _environment(broker).get(f"{ENV_PREFIX}HOST") == "0.0.0.0"


def test_broker_on_all_interfaces_is_given_tokens_from_the_operator(broker: dict[str, Any]) -> None:
    from service.api.auth import exposure_problem

    env = _environment(broker)
    # serve refuses a non-loopback address without tokens; compose must demand them, never ship one.
    assert exposure_problem(env[f"{ENV_PREFIX}HOST"], None) is not None
    assert re.fullmatch(r"\$\{GMEM_BROKER_TOKENS:\?[^}]+\}", env[f"{ENV_PREFIX}TOKENS"])


def test_compose_env_names_are_settings_fields(broker: dict[str, Any]) -> None:
    from service.settings import Settings

    names = [n for n in _environment(broker) if n.startswith(ENV_PREFIX)]
    assert names, "broker sets no GMEM_BROKER_* variables"
    unknown = [n for n in names if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields]
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_broker_database_url_matches_postgres_service(broker: dict[str, Any], postgres: dict[str, Any]) -> None:
    url = make_url(_environment(broker)[f"{ENV_PREFIX}DATABASE_URL"])
    pg_env = _environment(postgres)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres", "host must be the compose service name"
    assert (url.port or 5432) == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.database == pg_env["POSTGRES_DB"]


def test_postgres_healthcheck_uses_compose_credentials(
    postgres: dict[str, Any],
) -> None:
    test = postgres["healthcheck"]["test"]
    command = test if isinstance(test, str) else " ".join(map(str, test))
    pg_env = _environment(postgres)
    assert f"-U {pg_env['POSTGRES_USER']}" in command
    assert f"-d {pg_env['POSTGRES_DB']}" in command


# -- Dockerfile ----------------------------------------------------------------


def test_dockerfile_base_is_python_slim(dockerfile: list[Instruction]) -> None:
    base = next(i for i in dockerfile if i.keyword == "FROM").args.split()[0]
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-[a-z]+)?", base), base


def test_dockerfile_drops_root_before_cmd(dockerfile: list[Instruction]) -> None:
    keywords = [i.keyword for i in dockerfile]
    run_at = max(i for i, k in enumerate(keywords) if k in {"CMD", "ENTRYPOINT"})
    users = [(i, ins.args) for i, ins in enumerate(dockerfile) if ins.keyword == "USER"]
    assert users, "Dockerfile has no USER directive"
    before = [args for i, args in users if i < run_at]
    assert before, "USER must come before CMD/ENTRYPOINT"
    user = before[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"container runs as {user!r}"


def test_dockerfile_cmd_serves(dockerfile: list[Instruction]) -> None:
    cmd = _only(dockerfile, "CMD").args
    assert "gmem-broker serve" in cmd
    # Migrations run first, and serve replaces the shell so it gets signals.
    assert cmd.index("gmem-broker db upgrade") < cmd.index("gmem-broker serve")
    assert "exec gmem-broker serve" in cmd


def test_dockerfile_healthcheck_hits_healthz(dockerfile: list[Instruction]) -> None:
    healthcheck = _only(dockerfile, "HEALTHCHECK").args
    assert "/healthz" in healthcheck
    assert " CMD " in f" {healthcheck} "


def test_dockerfile_expose_matches_compose(dockerfile: list[Instruction], broker: dict[str, Any]) -> None:
    exposed = {int(port.split("/", 1)[0]) for ins in dockerfile if ins.keyword == "EXPOSE" for port in ins.args.split()}
    assert set(_port_targets(broker)) <= exposed, (exposed, _port_targets(broker))


def test_dockerfile_env_names_are_settings_fields(
    dockerfile: list[Instruction],
) -> None:
    from service.settings import Settings

    names = [
        token.split("=", 1)[0]
        for ins in dockerfile
        if ins.keyword == "ENV"
        for token in ins.args.split()
        if "=" in token and token.startswith(ENV_PREFIX)
    ]
    unknown = [n for n in names if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields]
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_dockerfile_copies_what_the_package_build_reads(dockerfile: list[Instruction]) -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    copied: set[str] = set()
    for ins in dockerfile:
        if ins.keyword == "COPY":
            copied.update(p.rstrip("/") for p in ins.args.split()[:-1])
    needed = {"pyproject.toml", "requirements.lock", "service", "migrations", project["readme"]}
    assert needed <= copied, f"the image build needs {sorted(needed - copied)}"
