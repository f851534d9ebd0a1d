"""vectune's error types. Each carries a message a user can act on and an exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class VectuneError(Exception):
    """Base of vectune's errors."""

    exit_code = EXIT_FAILURE


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<spec>'}: {self.message}"


class SpecError(VectuneError):
    """The spec is invalid: every problem, with its field path and YAML line.

    Args:
        source: the spec file (or the option, or `$VARIABLE`, the spec came from).
        problems: one `Problem` per thing wrong.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str, problems: Sequence[Problem]):
        if not all(isinstance(p, Problem) for p in problems):
            raise TypeError("SpecError takes Problem objects (field path, message, line)")
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the spec\n{lines}")

    def __reduce__(self):  # survives pickling (an error raised in a Ray worker crosses to the driver)
        return (type(self), (self.source, self.problems))


class DataError(VectuneError):
    """Input data is malformed: names the file and, where it can, the line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # survives pickling (an error raised in a Ray worker crosses to the driver)
        return (type(self), (self.path, self.message, self.line))


class InputError(VectuneError):
    """A bad command-line value or environment setting (a run id, a runs folder): names it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # survives pickling (an error raised in a Ray worker crosses to the driver)
        return (type(self), (self.where, self.message))


class ModelError(VectuneError):
    """A model cannot be found or loaded, or does not match what is expected."""

    exit_code = EXIT_BAD_INPUT


class GateFailed(VectuneError):
    """The tuned model is not better enough than the base model."""

    exit_code = EXIT_GATE_FAILED


class IndexingError(VectuneError):
    """Qdrant is unreachable, or a collection failed verification (the alias is untouched)."""

    exit_code = EXIT_FAILURE


class ClusterError(VectuneError):
    """The Ray cluster at `runtime.address` (or a job server) cannot be reached in time."""

    exit_code = EXIT_FAILURE


class StageError(VectuneError):
    """A stage cannot run (a missing upstream artifact, a bad state)."""

    exit_code = EXIT_FAILURE


def root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray-wrapped exception chain, in one line."""
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]
