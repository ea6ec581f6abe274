"""InvMM, inversion-based memorization: how memorized one image is by a diffusion model (Ma et al., ICCV 2025).

- :mod:`.model`: what a diffusion model and a copy similarity must provide (the two plugin points);
- :mod:`.measure`: the measure itself (:func:`~forensics.inversion.measure.invert`), its settings and presets;
- :mod:`.similarity`: the bundled copy similarities (pixel correlation, SSCD).

The library entry point is :func:`forensics.invmm` (images in, :class:`forensics.results.InvMMResult` out).
"""
