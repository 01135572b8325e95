"""Package data of aconvlib, installed as ``aconvlib._data`` (see ``pyproject.toml``): architecture configs
(``configs/``), the paper's numbers (``paper/tables.yml``), the embedded models, the attribute classifier and
the distilled ΔConv adapters (``models/``). Read through :mod:`aconvlib.models.resources`."""
