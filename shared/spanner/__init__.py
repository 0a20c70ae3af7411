"""Query spanning: one QIDO-RS query answered from many sources (issue 17)."""
