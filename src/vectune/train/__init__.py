"""Train stage: contrastive fine-tuning on Ray Train with registered losses."""

from vectune.train.losses import register_loss, registered
from vectune.train.stage import train, write_card

__all__ = ["register_loss", "registered", "train", "write_card"]
