"""The model a training worker fine-tunes: its attention dropout as `train.attention_dropout`
says (0 by default: on a CPU torch's fused attention takes no dropout, and the unfused path
doubles the step; `benchmarks/precision.py` measures it), set through the model's config
before its modules are built; the hidden layers' dropout is the model's own."""

from __future__ import annotations

import pytest


def _dropouts(model) -> tuple[set[float], set[float]]:
    attention = {m.dropout.p for m in model.modules() if type(m).__name__ == "BertSelfAttention"}
    hidden = {m.dropout.p for m in model.modules() if type(m).__name__ in ("BertSelfOutput", "BertOutput")}
    return attention, hidden


@pytest.mark.parametrize("asked, expected", [(0.0, 0.0), (0.25, 0.25), (None, 0.1)])
def test_attention_dropout_is_set_through_the_models_config(random_model, asked, expected):
    from vectune.embed.models import load_for_training

    model = load_for_training(random_model, device="cpu", attention_dropout=asked)
    attention, hidden = _dropouts(model)
    assert attention == {expected} and hidden == {0.1}  # the random model keeps BERT's 0.1 defaults
    assert model[0].auto_model.config.attention_probs_dropout_prob == expected


def test_the_trainer_every_worker_builds_trains_without_attention_dropout(random_model, tmp_path):
    import pyarrow as pa
    import torch

    from vectune.spec.train import MNRLoss
    from vectune.train.loop import LoopConfig, build_trainer, datasets_from_table

    rows = [{"query": f"query {q}", "positive": f"doc {q}", "negatives": [f"other {q}"], "group": 1} for q in range(8)]
    common = dict(model_path=random_model, base_model_path=random_model, loss=MNRLoss(), groups=(1,), micro_batch=4,
                  accumulation=1, total_steps=1, warmup_steps=0, checkpoint_every=1, learning_rate=1e-5,
                  weight_decay=0.0, precision="fp32", max_seq_length=16, seed=1, threads=1)
    for asked, expected in ((LoopConfig(**common).attention_dropout, 0.0), (None, 0.1)):
        config = LoopConfig(**{**common, "attention_dropout": asked})
        trainer = build_trainer(config, datasets_from_table(pa.Table.from_pylist(rows), (1,)), rank=0, world=1,
                                device=torch.device("cpu"), work=str(tmp_path / str(asked)))
        assert _dropouts(trainer.model)[0] == {expected}


def test_the_spec_default_is_off_and_null_means_the_models_own():
    from vectune.spec import validate_dict
    from vectune.errors import SpecError

    def spec(**train):
        return validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}}, "train": train}, "t")

    assert spec().train.attention_dropout == 0.0
    assert spec(attention_dropout=None).train.attention_dropout is None
    with pytest.raises(SpecError, match="attention_dropout"):
        spec(attention_dropout=1.5)
