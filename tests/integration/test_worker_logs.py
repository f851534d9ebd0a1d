"""What Ray workers say, as a user sees it with default settings (no `-v`, no
VECTUNE_WORKER_LOGS): their warnings (and prints) on the driver's stderr, nothing on its
stdout, and no bytecode listings anywhere.

The listings came from Ray Train's print patch: it logs every `print` of a training worker to
stderr, even one into a captured `sys.stdout`, and dill (the fingerprint of each Hugging Face
Dataset a worker builds: `vectune.train.loop.datasets_from_table`) prints a disassembly into
one to find a function's globals. A driver in its own process (as the CLI runs) starts a
local Ray through `init_ray`, runs a Ray task and a one-worker Ray Train run that builds the
training datasets as the train stage does, and logs from each; then its stderr, stdout and
the session's worker log files are read.
"""

from __future__ import annotations

import dis
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import cli_env

pytestmark = pytest.mark.ray

#: a line of a `dis` listing: an offset and an opcode name (`  14 LOAD_ATTR  1 (Table)`)
LISTING = re.compile(r"\b\d+ +(?:%s)\b|Disassembly of" % "|".join(sorted(dis.opmap, key=len, reverse=True)))

DRIVER = r'''
import logging, sys, tempfile, time

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from vectune._console import setup_logging
from vectune.runtime import init_ray
from vectune.spec.runtime import RuntimeSpec

setup_logging(verbose=False)  # as the CLI does
init_ray(RuntimeSpec(num_cpus=2))
print("SESSION", ray._private.worker._global_node.get_session_dir_path(), file=sys.stderr, flush=True)


@ray.remote(num_cpus=0.25)
def task():
    logging.getLogger("vectune.probe").warning("task warning marker")
    logging.getLogger("vectune.probe").info("task info marker")
    print("task print marker")


ray.get(task.remote())


class Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def loop(config):
    import pyarrow as pa

    from vectune.train.loop import datasets_from_table

    table = pa.table({"query": ["q1", "q2"], "positive": ["p1", "p2"], "negatives": [["n1"], ["n2"]],
                      "group": [1, 1]})
    # default settings keep INFO lines off stderr, which alone would hide what Ray Train's print
    # patch logs (at INFO): so every level is kept while the datasets are built, and written out
    root, keep = logging.getLogger(), Keep()
    level = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    try:
        assert len(datasets_from_table(table, (1,))["negatives_1"]) == 2
    finally:
        root.removeHandler(keep)
        root.setLevel(level)
    sys.stderr.write("".join(line + "\n" for line in keep.lines))
    logging.getLogger("vectune.train").warning("train warning marker")
    logging.getLogger("sentence_transformers.probe").info("train info marker")
    print("train print marker")
    time.sleep(2)  # Ray Train's controller and its placement-group cleaner keep polling meanwhile


TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
             run_config=RunConfig(name="logs", storage_path=tempfile.mkdtemp())).fit()
time.sleep(2)  # Ray forwards worker output asynchronously: let the last lines arrive
ray.shutdown()
'''


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The driver above with default settings: its output, and its Ray session's folder."""
    script = tmp_path_factory.mktemp("worker-logs") / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    env = cli_env()
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    session = next(line.split(" ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("SESSION "))
    return proc, Path(session)


def _listing(text: str) -> list[str]:
    return [line for line in text.splitlines() if LISTING.search(line)]


def test_no_bytecode_listings_on_the_driver_or_in_worker_logs(default_run):
    proc, session = default_run
    assert not _listing(proc.stderr), _listing(proc.stderr)
    assert not _listing(proc.stdout), _listing(proc.stdout)
    logs = sorted((session / "logs").glob("worker-*.err")) + sorted((session / "logs").glob("worker-*.out"))
    assert logs  # the workers' own files, whatever reached the driver
    found = {p.name: lines for p in logs if (lines := _listing(p.read_text(errors="replace")))}
    assert not found, found


def test_worker_warnings_reach_the_driver_stderr_and_its_chatter_does_not(default_run):
    proc, _ = default_run
    err = proc.stderr
    # a warning logged in a Ray task, and in a Ray Train worker, whose logging Ray Train sets up
    assert re.search(r"\(task pid=\d+\).*WARNING vectune\.probe: task warning marker", err), err[-4000:]
    assert re.search(r"\(RayTrainWorker pid=\d+\).*WARNING vectune\.train: train warning marker", err), err[-4000:]
    # INFO lines, Ray Train's own reports and its placement-group cleaner's polling do not
    for chatter in ("info marker", "Requesting resources", "Started training worker group",
                    "Failed to query Ray Train Controller"):
        assert chatter not in err, chatter
    # what a worker prints is console output for the user: stderr, never the driver's stdout,
    # which carries --json results
    assert "print marker" not in proc.stdout, proc.stdout
    assert re.search(r"\(task pid=\d+\).*task print marker", err), err[-4000:]
