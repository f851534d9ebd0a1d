"""Offline checks of the Kubernetes manifests in k8s/ (no cluster, no network).

Every kustomize build (the base and each overlay under k8s/overlays) is rendered with
`kubectl kustomize`, then:

- KubeRay objects (RayJob, RayCronJob, RayCluster) are validated with `jsonschema` against the
  openAPIV3Schema of the KubeRay CRDs in ../shared/schemas/kuberay/, plus a strict walk that rejects
  any field the schema does not declare (the CRDs leave `additionalProperties` unset, so plain
  JSON Schema validation would accept a misspelled field);
- every other object is validated with `kubernetes_validate` in strict mode (unknown fields fail);
- the deployment rules hold: GPUs only in the gpu builds, requests/limits and a non-root security
  context on every container, secrets by reference, the shared volumes, the spec ConfigMap.

These tests do not import vectune: the spec is checked as YAML.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# the shared folder sits beside the repository checkout (/work/main -> /work/shared)
SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
RAY_KINDS = set(CRD_FILES)
#: Kubernetes version whose schemas the core kinds are checked against (shipped by kubernetes-validate)
K8S_VERSION = "1.30.0"

#: every kustomize build in k8s/: the base and each overlay
BUILDS = ["base"] + sorted(
    f"overlays/{p.name}" for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
GPU_BUILDS = [b for b in BUILDS if b.endswith("gpu")]
CPU_BUILDS = [b for b in BUILDS if b not in GPU_BUILDS]
LEGACY_BUILDS = [b for b in BUILDS if "legacy" in b]

IMAGE = "ghcr.io/vectune/vectune"
SPEC_PATH = "/etc/vectune/spec.yaml"
FINETUNE_ENTRYPOINT = f"python pipelines/finetune.py --spec {SPEC_PATH}"
REINDEX_ENTRYPOINT = f"python pipelines/reindex.py --spec {SPEC_PATH}"
SUBMIT_COMMAND = [
    "vectune", "submit", SPEC_PATH,
    "--address", "http://vectune-raycluster-head-svc:8265",
    "--pipeline", "reindex", "--wait",
]
#: Secrets that production creates out of band (only dev builds generate placeholders)
OUT_OF_BAND_SECRETS = {"qdrant-api-key", "vectune-ray-auth"}
SPEC_KEYS = {"version", "name", "data", "model", "mine", "train", "evaluate", "index", "tune", "runtime"}


# -- building -------------------------------------------------------------------------------------
def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not on PATH: it is needed to render the kustomize builds (`kubectl kustomize`)")
    return path


@functools.lru_cache(maxsize=None)
def _render(build: str) -> str:
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / build)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize k8s/{build} failed:\n{proc.stderr}"
    return proc.stdout


def objects(build: str) -> list[dict]:
    """The rendered objects of a build (a fresh copy: tests may mutate it)."""
    return [doc for doc in yaml.safe_load_all(_render(build)) if doc]


def by_kind(build: str, kind: str) -> list[dict]:
    return [o for o in objects(build) if o["kind"] == kind]


def one(build: str, kind: str) -> dict:
    found = by_kind(build, kind)
    assert len(found) == 1, f"k8s/{build}: expected one {kind}, found {len(found)}"
    return found[0]


# -- KubeRay CRD schemas -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def crd_schema(api_version: str, kind: str) -> dict:
    if not SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMAS} (the shared/ folder beside the repo)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((SCHEMAS / CRD_FILES[kind]).read_text(encoding="utf-8"), Loader=loader)
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", True):
            return entry["schema"]["openAPIV3Schema"]
    raise AssertionError(f"the {kind} CRD serves no version {version}")


def strict_unknown_fields(schema: dict, value: Any, path: str = "") -> list[str]:
    """Fields present in `value` that `schema` does not declare.

    A schema node with `properties` but neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` is a closed struct: the API server would prune (drop)
    any other field silently, so for a manifest it is a mistake. Maps (`additionalProperties`)
    and int-or-string nodes accept any key/value.
    """
    if not isinstance(schema, dict) or schema.get("x-kubernetes-int-or-string"):
        return []
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    problems: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if props is not None and key in props:
                problems += strict_unknown_fields(props[key], item, where)
            elif isinstance(extra, dict):
                problems += strict_unknown_fields(extra, item, where)
            elif props is not None and extra is None and not preserve:
                problems.append(f"{where}: unknown field (declared here: {', '.join(sorted(props))})")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += strict_unknown_fields(schema["items"], item, f"{path}[{index}]")
    return problems


def kuberay_problems(obj: dict) -> list[str]:
    """jsonschema errors plus strict unknown-field errors for one KubeRay object."""
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(obj)
    ]
    return problems + strict_unknown_fields(schema, obj)


def core_validate(obj: dict) -> None:
    """kubernetes-validate, strict (unknown fields fail); raises on any problem."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# -- walking pod specs ---------------------------------------------------------------------------
def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(path, pod spec) for every pod spec inside an object, whatever its kind."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict]]:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield path, node
                return
            for key, item in node.items():
                yield from walk(item, f"{path}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{path}[{index}]")

    yield from walk(obj.get("spec", {}), f"{obj['kind']}/{obj['metadata']['name']}.spec")


def containers(pod: dict) -> list[dict]:
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def ray_cluster_specs(obj: dict) -> dict:
    """The RayCluster spec inside a RayJob, RayCronJob or RayCluster."""
    if obj["kind"] == "RayJob":
        return obj["spec"]["rayClusterSpec"]
    if obj["kind"] == "RayCronJob":
        return obj["spec"]["jobTemplate"]["rayClusterSpec"]
    return obj["spec"]


def ray_objects(build: str) -> list[dict]:
    return [o for o in objects(build) if o["kind"] in RAY_KINDS]


def gpus(container: dict) -> tuple[int, int]:
    res = container.get("resources", {})
    return (int(res.get("requests", {}).get("nvidia.com/gpu", 0)), int(res.get("limits", {}).get("nvidia.com/gpu", 0)))


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def spec_of(build: str) -> dict:
    cm = one(build, "ConfigMap")
    assert cm["metadata"]["name"].startswith("vectune-spec")
    return yaml.safe_load(cm["data"]["spec.yaml"])


# == the builds render ==========================================================================
def test_builds_are_discovered():
    assert {"base", "overlays/dev", "overlays/gpu"} <= set(BUILDS)
    assert GPU_BUILDS and CPU_BUILDS and LEGACY_BUILDS


@pytest.mark.parametrize("build", BUILDS)
def test_kustomize_build(build):
    docs = objects(build)
    assert docs, f"k8s/{build} rendered nothing"
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "StatefulSet", "Service", "PersistentVolumeClaim", "RayJob"} <= kinds
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects in k8s/{build}"


@pytest.mark.parametrize("build", BUILDS)
def test_reindex_is_scheduled_exactly_one_way(build):
    """RayCronJob (KubeRay >= 1.6) or CronJob + long-running RayCluster (legacy), never both."""
    kinds = [d["kind"] for d in objects(build)]
    if build in LEGACY_BUILDS:
        assert "RayCronJob" not in kinds
        assert kinds.count("CronJob") == 1 and kinds.count("RayCluster") == 1
    else:
        assert kinds.count("RayCronJob") == 1
        assert "CronJob" not in kinds and "RayCluster" not in kinds


# == schema validation ==========================================================================
@pytest.mark.parametrize("build", BUILDS)
def test_kuberay_objects_match_crd_schemas(build):
    found = ray_objects(build)
    assert found
    for obj in found:
        problems = kuberay_problems(obj)
        assert not problems, f"k8s/{build} {obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(problems)


def test_every_kuberay_kind_is_validated_somewhere():
    kinds = {o["kind"] for build in BUILDS for o in ray_objects(build)}
    assert kinds == RAY_KINDS


@pytest.mark.parametrize("build", BUILDS)
def test_core_objects_validate_strict(build):
    for obj in objects(build):
        if obj["kind"] in RAY_KINDS:
            continue
        try:
            core_validate(obj)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            pytest.fail(f"k8s/{build} {obj['kind']}/{obj['metadata']['name']}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            pytest.fail(f"k8s/{build}: no schema to check {obj['kind']} ({obj['apiVersion']}): {err.message}")


# -- negative: the validators do catch mistakes --------------------------------------------------
@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("spec",), ("entrypoint", "entrypiont")),
        (("spec",), ("rayClusterSpec", "rayClustrSpec")),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), ("groupName", "grupName")),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0),
         ("resources", "resource")),
        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "securityContext"),
         ("runAsNonRoot", "runAsNonroot")),
    ],
)
def test_misspelled_rayjob_field_fails(path, typo):
    rayjob = one("overlays/dev", "RayJob")
    assert not kuberay_problems(rayjob)
    node = rayjob
    for part in path:
        node = node[part]
    right, wrong = typo
    node[wrong] = node.pop(right)
    problems = kuberay_problems(rayjob)
    assert any(wrong in p for p in problems), problems


def test_plain_jsonschema_misses_typos_that_the_strict_walk_catches():
    """Why the strict walk exists: the CRDs leave additionalProperties unset."""
    rayjob = one("overlays/dev", "RayJob")
    rayjob["spec"]["entrypiont"] = rayjob["spec"].pop("entrypoint")
    schema = crd_schema(rayjob["apiVersion"], rayjob["kind"])
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(rayjob))
    problems = strict_unknown_fields(schema, rayjob)
    assert len(problems) == 1 and problems[0].startswith("spec.entrypiont: unknown field"), problems


def test_wrong_type_in_rayjob_fails():
    rayjob = one("overlays/dev", "RayJob")
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in p for p in kuberay_problems(rayjob))


def test_strict_check_accepts_maps_and_int_or_string():
    """No false positives: free-form maps and quantities are not closed structs."""
    rayjob = one("overlays/dev", "RayJob")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParams"]["num-cpus"] = "0"
    head["template"]["metadata"].setdefault("annotations", {})["example.com/anything"] = "x"
    head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    assert not kuberay_problems(rayjob)


def test_misspelled_raycronjob_and_raycluster_fields_fail():
    cron = one("overlays/dev", "RayCronJob")
    cron["spec"]["schedul"] = cron["spec"].pop("schedule")
    assert any(p.startswith("spec.schedul:") for p in kuberay_problems(cron))
    cluster = one("overlays/legacy-dev", "RayCluster")
    cluster["spec"]["workerGroupSpec"] = cluster["spec"].pop("workerGroupSpecs")
    assert any(p.startswith("spec.workerGroupSpec:") for p in kuberay_problems(cluster))


def test_misspelled_statefulset_field_fails_strict():
    sts = one("overlays/dev", "StatefulSet")
    core_validate(sts)
    sts["spec"]["replica"] = sts["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        core_validate(sts)


def test_misspelled_cronjob_container_field_fails_strict():
    cron = one("overlays/legacy-dev", "CronJob")
    core_validate(cron)
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["comand"] = container.pop("command")
    with pytest.raises(kubernetes_validate.ValidationError):
        core_validate(cron)


# == GPUs ========================================================================================
@pytest.mark.parametrize("build", GPU_BUILDS)
def test_gpu_builds_request_gpus_for_every_worker_group(build):
    found = ray_objects(build)
    assert {o["kind"] for o in found} >= {"RayJob"}
    for obj in found:
        cluster = ray_cluster_specs(obj)
        for head in cluster["headGroupSpec"]["template"]["spec"]["containers"]:
            assert gpus(head) == (0, 0), f"{obj['kind']}: the head should not hold a GPU"
        groups = cluster["workerGroupSpecs"]
        assert groups
        for group in groups:
            ray = group["template"]["spec"]["containers"][0]
            requested, limited = gpus(ray)
            assert requested >= 1 and requested == limited, f"{obj['kind']}/{group['groupName']}: {ray['resources']}"
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("build", CPU_BUILDS)
def test_cpu_builds_request_no_gpus(build):
    assert "nvidia.com/gpu" not in _render(build)
    spec = spec_of(build)
    assert spec["train"].get("gpus_per_worker", 0) == 0
    assert spec["index"].get("num_gpus", 0) == 0


@pytest.mark.parametrize("build", BUILDS)
def test_finetune_cluster_fits_the_spec(build):
    """The fine-tune RayJob's workers hold what the spec's Ray Train workers ask for."""
    spec = spec_of(build)["train"]
    cluster = ray_cluster_specs(one(build, "RayJob"))
    total_gpus = total_cpus = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        total_gpus += group["replicas"] * int(limits.get("nvidia.com/gpu", 0))
        total_cpus += group["replicas"] * cpus(limits["cpu"])
    workers = spec.get("workers", 1)
    assert workers * spec.get("gpus_per_worker", 0) <= total_gpus
    if build in GPU_BUILDS:
        assert spec.get("gpus_per_worker", 0) > 0, "a GPU build should train on its GPUs"
        assert spec_of(build)["index"].get("num_gpus", 0) > 0
    head_cpu = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert workers * spec.get("cpus_per_worker", 1) <= total_cpus + cpus(head_cpu)


@pytest.mark.parametrize("build", BUILDS)
def test_image_tags(build):
    images = {c["image"] for o in objects(build) for _, pod in pod_specs(o) for c in containers(pod)}
    ours = {i for i in images if i.startswith(IMAGE)}
    assert ours, images
    expected = f"{IMAGE}:0.1.0-cuda" if build in GPU_BUILDS else f"{IMAGE}:0.1.0"
    assert ours == {expected}
    for image in images:
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"unpinned image {image}"


# == every container: resources and a non-root security context ==================================
@pytest.mark.parametrize("build", BUILDS)
def test_every_container_has_requests_limits_and_runs_as_non_root(build):
    seen = 0
    for obj in objects(build):
        for where, pod in pod_specs(obj):
            pod_sc = pod.get("securityContext", {})
            assert pod_sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot"
            assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            for c in containers(pod):
                seen += 1
                name = f"{where}/{c['name']}"
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}: resources.{part} needs cpu and memory"
                sc = c.get("securityContext", {})
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
                assert sc.get("runAsUser", pod_sc.get("runAsUser")) == 1000, name
                assert sc.get("allowPrivilegeEscalation") is False, name
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
                assert sc.get("privileged") in (None, False), name
                seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
                assert seccomp.get("type") == "RuntimeDefault", name
    # qdrant + (head, worker, submitter) per Ray object, + the legacy CronJob
    assert seen >= 1 + 3 * len(ray_objects(build))


# == secrets by reference ========================================================================
SECRETISH = ("KEY", "TOKEN", "PASSWORD", "SECRET")


@pytest.mark.parametrize("build", BUILDS)
def test_secrets_only_by_reference(build):
    docs = objects(build)
    secrets = {o["metadata"]["name"] for o in docs if o["kind"] == "Secret"}
    if build in GPU_BUILDS or build == "base":
        assert not secrets, f"k8s/{build} must not carry Secrets: production creates them out of band"
    for obj in docs:
        for where, pod in pod_specs(obj):
            for c in containers(pod):
                for env in c.get("env", []):
                    if any(word in env["name"] for word in SECRETISH) and env["name"] != "RAY_AUTH_MODE":
                        assert "value" not in env, f"{where}/{c['name']}: {env['name']} is set inline"
                        ref = env["valueFrom"]["secretKeyRef"]
                        base_name = ref["name"]
                        if secrets:
                            assert base_name in secrets, f"{where}: Secret {base_name} is not in the build"
                        else:
                            assert base_name in OUT_OF_BAND_SECRETS, base_name


@pytest.mark.parametrize("build", BUILDS)
def test_qdrant_key_wiring(build):
    spec = spec_of(build)
    key_env = spec["index"]["qdrant"]["api_key_env"]
    sts = one(build, "StatefulSet")
    qdrant = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in qdrant["env"]}
    server_ref = env["QDRANT__SERVICE__API_KEY"]["valueFrom"]["secretKeyRef"]
    for obj in ray_objects(build):
        cluster = ray_cluster_specs(obj)
        pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
        for pod in pods:
            ray_env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert ray_env[key_env]["valueFrom"]["secretKeyRef"] == server_ref, obj["kind"]


@pytest.mark.parametrize("build", BUILDS)
def test_references_resolve_inside_the_build(build):
    """ConfigMap and PVC names used by pods exist in the build (kustomize renamed them consistently)."""
    docs = objects(build)
    configmaps = {o["metadata"]["name"] for o in docs if o["kind"] == "ConfigMap"}
    claims = {o["metadata"]["name"] for o in docs if o["kind"] == "PersistentVolumeClaim"}
    for obj in docs:
        templates = {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
        for where, pod in pod_specs(obj):
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps, f"{where}: {volume}"
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{where}: {volume}"
            mounts = {m["name"] for c in containers(pod) for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])} | templates, where


# == shared storage and the spec =================================================================
@pytest.mark.parametrize("build", BUILDS)
def test_shared_volumes_on_every_ray_pod(build):
    docs = objects(build)
    pvcs = {o["metadata"]["name"]: o for o in docs if o["kind"] == "PersistentVolumeClaim"}
    assert pvcs["vectune-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "ReadWriteMany" in pvcs["vectune-data"]["spec"]["accessModes"]
    spec = spec_of(build)
    for obj in ray_objects(build):
        cluster = ray_cluster_specs(obj)
        pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
        for pod in pods:
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert volumes[mounts["/mnt/vectune"]["name"]]["persistentVolumeClaim"]["claimName"] == "vectune-shared"
            assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "vectune-data"
            assert mounts["/data"].get("readOnly") is True
            assert "configMap" in volumes[mounts["/etc/vectune"]["name"]]
            assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
            assert spec["runtime"]["storage"].startswith("/mnt/vectune/")
            assert spec["data"]["root"].startswith("/data/")


@pytest.mark.parametrize("build", BUILDS)
def test_spec_configmap(build):
    spec = spec_of(build)
    assert spec["version"] == 1
    assert spec["name"] == "scifact"
    assert set(spec) <= SPEC_KEYS, set(spec) - SPEC_KEYS
    data = spec["data"]
    assert set(data) <= {"root", "corpus", "queries", "train", "splits"}
    assert data["root"] == "/data/scifact"
    assert data["corpus"]["path"] == "corpus.jsonl"
    assert data["queries"]["path"] == "queries.jsonl"
    assert data["train"]["path"] == "qrels/train.tsv"
    assert data["splits"]["test"]["path"] == "qrels/test.tsv"
    assert spec["runtime"] == {"address": "auto", "storage": "/mnt/vectune/runs"}
    qdrant = spec["index"]["qdrant"]
    assert qdrant == {"url": "http://qdrant:6333", "api_key_env": "QDRANT_API_KEY"}
    # the URL names the qdrant Service of the same build, on its http port
    service = next(o for o in objects(build) if o["kind"] == "Service" and o["metadata"]["name"] == "qdrant")
    assert any(p["port"] == 6333 for p in service["spec"]["ports"])


# == entrypoints and the components ==============================================================
@pytest.mark.parametrize("build", BUILDS)
def test_entrypoints(build):
    rayjob = one(build, "RayJob")
    assert rayjob["spec"]["entrypoint"] == FINETUNE_ENTRYPOINT
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    if build in LEGACY_BUILDS:
        cron = one(build, "CronJob")
        container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == SUBMIT_COMMAND
        cluster = one(build, "RayCluster")
        host = SUBMIT_COMMAND[SUBMIT_COMMAND.index("--address") + 1].split("//")[1].split(":")[0]
        assert host == f"{cluster['metadata']['name']}-head-svc"
        head_env = {e["name"] for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert {e["name"] for e in container["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} and "RAY_AUTH_TOKEN" in head_env
    else:
        cron = one(build, "RayCronJob")
        assert cron["spec"]["jobTemplate"]["entrypoint"] == REINDEX_ENTRYPOINT
        assert cron["spec"]["schedule"].count(" ") == 4


@pytest.mark.parametrize("build", BUILDS)
def test_qdrant_statefulset(build):
    sts = one(build, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    qdrant = pod["containers"][0]
    assert qdrant["image"].split(":")[0] == "qdrant/qdrant"
    ports = {p["name"]: p["containerPort"] for p in qdrant["ports"]}
    assert ports["http"] == 6333 and ports["grpc"] == 6334
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert any(m["name"] in claims and m["mountPath"] == "/qdrant/storage" for m in qdrant["volumeMounts"])
    services = {o["metadata"]["name"]: o for o in objects(build) if o["kind"] == "Service"}
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in services["qdrant"]["spec"]["ports"]} >= {6333, 6334}


@pytest.mark.parametrize("build", BUILDS)
def test_objects_are_plain_json_data(build):
    """What kubectl would send: plain JSON data (no YAML dates or other non-JSON values)."""
    json.dumps(objects(build))
