"""ModernBERT: rotary positions, alternating global and sliding-window attention, no token_type_ids.
ONNX Runtime has no fusion for it: exported unfused."""

from core.families.base import SlidingWindowEncoder, register_family

MODERNBERT = register_family(SlidingWindowEncoder("modernbert", ("modernbert",)))
