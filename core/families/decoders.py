"""Decoder embedders (Qwen3-Embedding style): causal attention, last-token pooling, instruction prompts."""

from core.families.base import Decoder, register_family

QWEN = register_family(Decoder("qwen", ("qwen3", "qwen2")))
