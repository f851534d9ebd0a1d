"""Encoder actor pools: how many actors the cluster fits, with what CPUs, GPUs and threads.

Planned once per stage, from the stage's settings and the cluster's resources, and passed
down to everything that builds the pool (`embed_dataset`) or splits work for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActorPlan:
    """How many encoder actors, with how many CPUs and torch threads each."""

    actors: int
    cpus: float
    threads: int
    gpus: float = 0.0


def plan_actors(concurrency: int | None, gpus_per_actor: float = 0.0) -> ActorPlan:
    """Fit `concurrency` encoder actors on the running cluster (see `fit_actors`)."""
    import ray

    resources = ray.cluster_resources()
    return fit_actors(float(resources.get("CPU", 1)), float(resources.get("GPU", 0)), concurrency, gpus_per_actor)


def fit_actors(total: float, gpus: float, concurrency: int | None, gpus_per_actor: float = 0.0) -> ActorPlan:
    """Fit `concurrency` encoder actors on `total` CPUs and `gpus` GPUs, leaving read tasks a
    CPU sliver.

    Actors that reserve every CPU starve Ray Data's read tasks and the job hangs, so
    each actor takes (CPUs - 0.25) / actors and runs that many torch threads. Unset,
    `concurrency` is one actor per CPU below 4 CPUs, one per 2 CPUs above, or one per GPU
    share with `gpus_per_actor`.
    """
    if gpus_per_actor > 0:
        actors = concurrency or max(1, int(gpus // gpus_per_actor))
        return ActorPlan(actors, cpus=1.0, threads=max(1, int(total // max(actors, 1)) - 1) or 1, gpus=gpus_per_actor)
    actors = concurrency or (int(total) if total < 4 else max(1, int(total) // 2))
    actors = max(1, min(actors, int(total) or 1))
    cpus = max(0.1, (total - 0.25) / actors)
    threads = max(1, int(round(total / actors)))
    return ActorPlan(actors, cpus=round(cpus, 3), threads=threads)


def actor_pool(size: int):
    """A fixed pool of `size` encoder actors, each handed one batch at a time.

    With more tasks in flight per actor (Ray's default), the first actor to start takes
    the queued batches while the others are still starting: a small corpus
    would then be encoded by one actor alone.
    """
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)
