"""Images to per-layer embeddings: the encoder interface, batched embedding from one forward pass, the
on-disk embedding cache, finding weights, torch devices."""
