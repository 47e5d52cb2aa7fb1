"""Compression callbacks, one file per technique (pruning, distillation, quantization,
bnb_weights), and what they share: the contract and order check (callback), the measuring
module (measure), schedules, and the upkeep after a structure change (structure_change)."""

from slimlab.compression.callback import CompressionCallback, Stage, check_compression_order

__all__ = ["CompressionCallback", "Stage", "check_compression_order"]
