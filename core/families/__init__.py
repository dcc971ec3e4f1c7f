"""Model families: one registered object per transformer family, found by ``config.model_type``."""

from core.families.base import FAMILIES, Decoder, Family, SlidingWindowEncoder, family_for, register_family

# Registration by import.
from core.families import decoders, encoders, modernbert  # noqa: E402,F401  isort: skip

__all__ = ["FAMILIES", "Decoder", "Family", "SlidingWindowEncoder", "family_for", "register_family"]
