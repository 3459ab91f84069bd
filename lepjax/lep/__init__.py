"""LEP: Learned Embedding Propagation (Tikhomirov & Chernyshev 2024).

    from lepjax.lep import propagate, validate_config
"""

from lepjax.lep.propagate import propagate, validate_config

__all__ = ["propagate", "validate_config"]
