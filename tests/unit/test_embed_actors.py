"""The encoder actor plan (pure): actors, CPUs, threads and GPUs fitted to a cluster."""

from __future__ import annotations

from vectune.embed.actors import ActorPlan, fit_actors


def test_small_machines_get_one_actor_per_cpu_and_leave_the_reads_a_sliver():
    plan = fit_actors(2.0, 0.0, None)
    assert plan == ActorPlan(actors=2, cpus=0.875, threads=1)
    assert plan.actors * plan.cpus < 2.0  # Ray Data's read tasks still get a CPU share


def test_larger_machines_get_one_actor_per_two_cpus():
    plan = fit_actors(16.0, 0.0, None)
    assert plan.actors == 8 and plan.threads == 2 and plan.cpus == round(15.75 / 8, 3)


def test_concurrency_is_capped_by_the_cpus():
    assert fit_actors(2.0, 0.0, 8).actors == 2
    assert fit_actors(8.0, 0.0, 3).actors == 3


def test_gpu_actors_one_per_gpu_share():
    plan = fit_actors(16.0, 2.0, None, gpus_per_actor=0.5)
    assert plan.actors == 4 and plan.gpus == 0.5 and plan.cpus == 1.0 and plan.threads == 3


def test_fractional_gpus_put_two_encoder_actors_on_one_gpu():
    """mine/evaluate/index.num_gpus 0.5: a machine with one GPU gets two actors sharing it (pure
    planning: runs on CPU machines too; the GPU paths themselves are in test_gpu.py)."""
    plan = fit_actors(16, 1, None, gpus_per_actor=0.5)
    assert plan.actors == 2 and plan.gpus == 0.5
