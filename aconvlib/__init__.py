"""aconvlib: companion library of The ΔConv Book.

Locality studies of self-attention in diffusers models and ΔConvBlock replacements
(Dong et al., "Can We Achieve Efficient Diffusion without Self-Attention?", ICCV 2025).
"""
__version__ = "0.1.0"

import warnings as _warnings

# In Jupyter without ipywidgets, tqdm.auto (imported by diffusers and by our training loops) falls back
# to text bars with a warning on every chapter; the text bars are what we want (offline HTML).
_warnings.filterwarnings("ignore", message="IProgress not found")
