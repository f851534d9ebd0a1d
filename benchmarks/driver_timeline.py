"""The driver's RSS over one full re-index of N synthetic documents (scale.py's corpus and tiny
model, in this process as scale.py's child runs it), sampled every 0.2 s, with vectune's log lines
and the stage timings on the same clock: where in the re-index the driver grows.

    python benchmarks/driver_timeline.py 300000 /tmp/timeline.txt

Writes `seconds value` lines (RSS in MiB, or a LOG / START / END line), and beside them (`.parts`)
`seconds anon shmem`: the heap and the shared memory (Ray's object store) parts of that RSS. The tiny model is built by a
child process (as scale.py's parent does), so this process, the driver, never imports torch.
"""
import sys, time, threading, json, logging, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from argparse import Namespace
import scale
from reindex import synthetic
n = int(sys.argv[1])
def rss(field="VmRSS"):
    for l in open("/proc/self/status"):
        if l.startswith(field + ":"): return int(l.split()[1]) / 1024
samples = []; parts = []; stop = False
t0 = time.time()
def sampler():  # RSS, and its heap (RssAnon) and shared-memory (RssShmem: Ray's object store) parts
    while not stop:
        at = round(time.time() - t0, 1)
        samples.append((at, round(rss(), 1)))
        parts.append((at, round(rss("RssAnon"), 1), round(rss("RssShmem"), 1)))
        time.sleep(0.2)
class H(logging.Handler):
    def emit(self, rec):
        if rec.name.startswith("vectune"):
            samples.append((round(time.time() - t0, 1), "LOG " + rec.getMessage()[:100]))
logging.basicConfig(level=logging.WARNING)
logging.getLogger("vectune").setLevel(logging.INFO); logging.getLogger("vectune").addHandler(H())
from vectune.runtime import init_ray
from vectune.spec.runtime import RuntimeSpec
init_ray(RuntimeSpec(num_cpus=None))
work = Path(tempfile.mkdtemp(prefix="vectune-timeline-"))
synthetic(work, n)
args = Namespace(seq=32, embed_batch=1024, upsert_batch=1024, on_disk=False)
import subprocess
model = subprocess.run([sys.executable, "-c", "import sys, scale; print(scale.tiny_model(__import__('pathlib').Path(sys.argv[1])))",
                        str(Path(tempfile.gettempdir()) / "vectune-scale-model")], cwd=Path(__file__).resolve().parent,
                       capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
spec_path = scale.write_spec(work, model, "fp32", args)
samples.append((round(time.time() - t0, 1), f"START rss {rss():.1f}"))
threading.Thread(target=sampler, daemon=True).start()
from vectune.index import reindex
from vectune.runs import Run
from vectune.spec import load_spec
spec = load_spec(spec_path)
result = reindex(spec, Run.create(spec, "full"), spec.model.base, full=True)
stop = True
samples.append((round(time.time() - t0, 1), "END " + json.dumps(result.get("timings"))))
Path(sys.argv[2]).write_text("\n".join(f"{a} {b}" for a, b in samples))
Path(sys.argv[2]).with_suffix(".parts").write_text("\n".join(f"{a} {b} {c}" for a, b, c in parts))
print("peak", max(b for a, b in samples if isinstance(b, float)), "anon", max(b for _, b, _ in parts),
      "shmem", max(c for _, _, c in parts))
import shutil
shutil.rmtree(work, ignore_errors=True)
