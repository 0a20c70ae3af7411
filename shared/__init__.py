"""Axiom Flow core: stages, rules, morphing, destinations and the ports they use.

Nothing in this package imports a Google client at module level; GCP adapters
import theirs when they are built, so the core runs without cloud credentials.
"""

__version__ = "0.1.0"
