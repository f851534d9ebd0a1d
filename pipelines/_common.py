"""What every Ray job entrypoint in pipelines/ shares: arguments, the spec, error handling.

Not a pipeline itself. A pipeline script parses `--spec PATH` (or reads the spec from the
VECTUNE_SPEC_YAML variable, as `vectune submit --image` sends it), calls one library
function, prints its JSON result on stdout and exits 0; a VectuneError becomes a message
on stderr and its exit code (2 bad input, 3 gate failed, 1 otherwise), as in the CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

#: set by Ray's job supervisor in the environment of a submitted job's driver
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

log = logging.getLogger("vectune")


def parser(description: str, *, model: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--spec", default=os.environ.get("VECTUNE_SPEC"),
                   help="The YAML spec (default: $VECTUNE_SPEC, else the YAML text in $VECTUNE_SPEC_YAML).")
    p.add_argument("--run-id", default=os.environ.get("VECTUNE_RUN_ID"), help="Reuse (resume) this run.")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="Override a spec field (repeatable), as `vectune ... --set` does.")
    if model:
        p.add_argument("--model", "-m", help="A model folder or registry name instead of the default one.")
    p.add_argument("--verbose", "-v", action="store_true", help="Debug logs.")
    return p


def load(path: str | None, sets: list[str] | None = None):
    """The spec from `path`, or from $VECTUNE_SPEC_YAML, with `--set` overrides; a submitted
    job joins its cluster."""
    from vectune.spec import load_spec_from, parse_overrides

    spec = load_spec_from(path, parse_overrides(sets))
    if os.environ.get(_JOB_CONFIG_ENV) and spec.runtime.address == "local":
        # a submitted job runs inside a cluster: join it instead of starting a private Ray
        log.info("running as a Ray job: runtime.address local -> auto")
        spec.runtime.address = "auto"
    return spec


def main(description: str, call: Callable, *, model: bool = False, extra: Callable | None = None) -> None:
    """Parse arguments, load the spec, run `call(spec, args)`, print its result, exit."""
    p = parser(description, model=model)
    if extra:
        extra(p)
    args = p.parse_args()
    sys.exit(execute(call, args))


def execute(call: Callable, args: argparse.Namespace) -> int:
    from vectune._console import emit_json, print_error, setup_logging
    from vectune.errors import VectuneError

    setup_logging(args.verbose)
    # the job's runtime_env and vectune's own worker env may name the same variables
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    try:
        result = call(load(args.spec, args.sets), args)
    except VectuneError as exc:
        print_error(exc)
        return exc.exit_code
    emit_json(result)
    return 0
