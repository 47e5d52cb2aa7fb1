"""Compression callbacks: one file per technique (pruning, quantization, distillation, report)."""
