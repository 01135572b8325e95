"""aconvlib: companion library of The ΔConv Book.

Locality studies of self-attention in diffusers models and ΔConvBlock replacements
(Dong et al., "Can We Achieve Efficient Diffusion without Self-Attention?", ICCV 2025).
"""
__version__ = "0.1.0"
