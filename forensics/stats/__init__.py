"""Per-layer statistics of (T, P_n, Q) embeddings: the statistic contract and the bundled C_T."""
