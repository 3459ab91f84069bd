"""LEP: Learned Embedding Propagation (Tikhomirov & Chernyshev 2024)."""
