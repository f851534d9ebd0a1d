"""`vectune submit` against a real two-node Ray cluster (head + worker, token auth on).

A 100-document SciFact slice is evaluated through the Jobs API; the two encoder actors
(0.875 CPU each, one CPU per node) can only fit one per node, and the job's task records
show that both nodes encoded documents. Run artifacts land in `runtime.storage`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

VECTUNE = str(Path(sys.executable).parent / "vectune")


def vectune(cluster, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 180):
    return subprocess.run([VECTUNE, *args], env=env or cluster.env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """The 'shared mount' every node sees (one machine: any folder)."""
    return tmp_path_factory.mktemp("shared-storage")


@pytest.fixture(scope="module")
def tiny(make_slice, tmp_path_factory, storage):
    # batch_size 8: 13 blocks for 100 documents, so both encoder actors get batches
    return make_slice(tmp_path_factory.mktemp("cluster-slice"), n_docs=100, n_queries=20,
                      spec={"evaluate": {"concurrency": 2, "batch_size": 8}, "runtime": {"storage": str(storage)}})


@pytest.fixture(scope="module")
def evaluated(ray_cluster, tiny):
    """`vectune submit --pipeline evaluate --wait --json`, run from outside the repository."""
    proc = vectune(ray_cluster, "submit", str(tiny.spec_path), "--address", ray_cluster.address,
                   "--pipeline", "evaluate", "--wait", "--json", cwd=tiny.root)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout), proc.stderr


def test_submit_evaluate_succeeds_and_writes_runs_to_storage(evaluated, tiny, storage):
    result, logs = evaluated
    assert result["status"] == "SUCCEEDED" and result["exit_code"] == 0
    assert result["pipeline"] == "evaluate" and result["storage"] == str(storage)
    # the pipeline's JSON result was streamed back with the driver's logs
    assert '"run_id"' in logs and "ndcg@10" in logs
    manifests = list(storage.glob("slice/*/manifest.json"))
    assert len(manifests) == 1, manifests
    run_dir = manifests[0].parent
    metrics = json.loads((run_dir / "metrics.json").read_text())["base"]["test"]
    assert metrics["num_queries"] == 20
    assert 0.3 < metrics["metrics"]["ndcg@10"] <= 1.0  # a real ranking, not noise
    manifest = json.loads(manifests[0].read_text())
    assert manifest["stages"]["evaluate:base:test"]["status"] == "done"
    # the spec the job read was the rendered one: address auto, storage kept
    assert manifest["spec"]["runtime"]["address"] == "auto"
    assert manifest["spec"]["runtime"]["storage"] == str(storage)
    assert not (tiny.root / "runs").exists()  # runtime.runs lost to runtime.storage


def test_both_nodes_encoded(ray_cluster, evaluated):
    result, _ = evaluated
    proc = vectune(ray_cluster, "jobs", "status", result["job_id"], "--address", ray_cluster.address, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["status"] == "SUCCEEDED" and info["exit_code"] == 0
    assert info["metadata"]["vectune_pipeline"] == "evaluate"
    nodes = info["nodes"]
    alive = {n["node_id"] for n in ray_cluster.alive_nodes()}
    assert set(nodes) == alive and len(alive) == 2
    roles = {("head" if n["head"] else "worker"): n for n in nodes.values()}
    assert set(roles) == {"head", "worker"}
    assert "head_node" in roles["head"]["resources"] and "worker_node" in roles["worker"]["resources"]
    for role, node in roles.items():
        encoders = sum(n for cls, n in node["actors"].items() if "Encoder" in cls)
        encoded = sum(n for name, n in node["tasks"].items() if "Encoder" in name)
        assert encoders == 1, (role, node["actors"])
        assert encoded >= 1, (role, node["tasks"])


def test_jobs_logs_and_list(ray_cluster, evaluated):
    result, _ = evaluated
    proc = vectune(ray_cluster, "jobs", "logs", result["job_id"], "--address", ray_cluster.address)
    assert proc.returncode == 0, proc.stderr
    assert '"run_id"' in proc.stdout
    listed = vectune(ray_cluster, "jobs", "list", "--address", ray_cluster.address, "--json")
    assert listed.returncode == 0, listed.stderr
    assert result["job_id"] in {j["job_id"] for j in json.loads(listed.stdout)}


def test_failed_job_exits_with_the_drivers_code(ray_cluster, tiny, tmp_path):
    # a model folder that does not exist: the driver raises ModelError (bad input, exit 2)
    missing = tmp_path / "no-such-model"
    proc = vectune(ray_cluster, "submit", str(tiny.spec_path), "--address", ray_cluster.address,
                   "--pipeline", "evaluate", "--model", str(missing), "--wait")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model folder not found" in proc.stdout
    assert "FAILED" in proc.stderr


def test_stop_a_running_job(ray_cluster, tiny):
    # --no-wait: submit returns once the job is accepted (it waits by default, as `ray job submit` does)
    proc = vectune(ray_cluster, "submit", str(tiny.spec_path), "--address", ray_cluster.address,
                   "--pipeline", "evaluate", "--no-wait", "--json")
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["job_id"]
    stopped = vectune(ray_cluster, "jobs", "stop", job_id, "--address", ray_cluster.address, "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "STOPPED"
    status = vectune(ray_cluster, "jobs", "status", job_id, "--address", ray_cluster.address, "--json",
                     "--no-nodes")
    info = json.loads(status.stdout)
    assert info["status"] == "STOPPED" and info["exit_code"] == 1


@pytest.mark.parametrize("how", ["wrong token", "no token"])
def test_auth_failures_are_actionable_and_never_print_tokens(ray_cluster, tmp_path, how):
    wrong = "wrong-" + "0" * 40
    if how == "wrong token":
        env = ray_cluster.env(RAY_AUTH_TOKEN=wrong)
    else:  # nothing set, and a HOME without ~/.ray/auth_token
        env = {k: v for k, v in ray_cluster.env(HOME=str(tmp_path)).items()
               if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    proc = vectune(ray_cluster, "jobs", "list", "--address", ray_cluster.address, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "RAY_AUTH_MODE=token" in proc.stderr
    output = proc.stdout + proc.stderr
    assert ray_cluster.token not in output and wrong not in output


@pytest.mark.slow  # two re-index jobs on the cluster (~2 minutes); run with --run-slow
def test_one_writer_per_alias_on_the_cluster(ray_cluster, make_slice, tmp_path_factory, storage):
    """The alias lease lives in the shared runs storage (outside Qdrant), so it holds across
    the cluster: two re-index jobs submitted at once, one holds the lease (made to hang halfway
    through its upserts by an injected fault), the other fails within seconds naming it (exit
    1). The holder's job is stopped (its driver killed); the next job takes the lease over and
    completes."""
    import time

    root = tmp_path_factory.mktemp("cluster-lease")
    sl = make_slice(root, n_docs=40, n_queries=5, seed=3,
                    spec={"model": {"max_seq_length": 48},
                          "index": {"batch_size": 4, "embed_batch_size": 10, "lease_ttl": 6,
                                    "qdrant": {"path": str(storage / "qdrant-lease")}},
                          "runtime": {"storage": str(storage / "lease-runs")}})
    marker = root / "holder-halfway"
    faults = root / "faults.json"
    faults.write_text(json.dumps({"index.upsert": {"after": 2, "mode": "hang", "marker": str(marker)}}))
    env_json = json.dumps({"env_vars": {"VECTUNE_FAULTS": str(faults)}})
    held = vectune(ray_cluster, "submit", str(sl.spec_path), "--address", ray_cluster.address, "--pipeline",
                   "reindex", "--no-wait", "--json", "--runtime-env-json", env_json, cwd=sl.root)
    assert held.returncode == 0, held.stderr[-3000:]
    holder_job = json.loads(held.stdout)["job_id"]
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert time.monotonic() < deadline, "the holder job never reached its upserts"
        time.sleep(1)
    lease = next((storage / "lease-runs" / "_leases").glob("*.json"))
    holder = json.loads(lease.read_text())

    start = time.monotonic()
    second = vectune(ray_cluster, "submit", str(sl.spec_path), "--address", ray_cluster.address, "--pipeline",
                     "reindex", "--wait", cwd=sl.root)
    took = time.monotonic() - start
    assert second.returncode == 1, (second.stdout[-2000:], second.stderr[-3000:])
    assert f"run {holder['run_id']} on" in second.stdout + second.stderr
    assert took < 120, f"the second writer's job took {took:.0f} s to give up (job start included)"

    stopped = vectune(ray_cluster, "jobs", "stop", holder_job, "--address", ray_cluster.address, "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(lease.read_text())["run_id"] == holder["run_id"]  # a killed holder never released it
    third = vectune(ray_cluster, "submit", str(sl.spec_path), "--address", ray_cluster.address, "--pipeline",
                    "reindex", "--wait", "--json", cwd=sl.root, timeout=400)
    assert third.returncode == 0, (third.stdout[-2000:], third.stderr[-4000:])
    said = " ".join(third.stderr.split())
    assert "taking over the lease" in said
    assert not lease.exists()  # released once the swap was done
