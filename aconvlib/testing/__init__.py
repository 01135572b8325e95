"""Test support that ships with the package: tiny random-weight checkpoints in the published Hugging Face
repo layouts (:mod:`~aconvlib.testing.hub_fixtures`) and tiny denoisers (:mod:`~aconvlib.testing.dummies`).
Imports nothing from the rest of aconvlib except model knowledge."""
