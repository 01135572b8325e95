"""Aspect-ratio bucket tables of the published models (the sizes ``ModelSpec.bucket_sizes`` returns).

Sizes are ``(height, width)`` in pixels. :data:`SDXL_BUCKETS` (the SDXL paper's table), :func:`area_buckets` (the
usual equal-area scheme of SD fine-tuning scripts, used for SD1.5, which was trained on squares only) and
:func:`pixart_bins` (diffusers' PixArt aspect-ratio bins). The training layer turns them into
:class:`~aconvlib.training.data.BucketTable`.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["SDXL_BUCKETS", "area_buckets", "pixart_bins"]


#: SDXL's multi-aspect training resolutions (height, width), from the table in the SDXL paper's
#: appendix (Podell et al. 2023): all near 1024² pixels, multiples of 64. It includes the nine
#: resolutions usually quoted (1024², 1152×896, 896×1152, 1216×832, 832×1216, 1344×768, 768×1344,
#: 1536×640, 640×1536) and is not quite symmetric (704×1344 is listed, 1344×704 is not).
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
    (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
    (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)


def area_buckets(max_area: int, step: int = 64, min_side: int = 256, max_side: int = 1024) -> list[tuple[int, int]]:
    """The usual bucket construction of SD fine-tuning scripts (NovelAI-style aspect-ratio bucketing):
    for every side ``s`` in ``min_side..max_side`` (step ``step``) the largest other side (multiple of
    ``step``, within the limits) with area ≤ ``max_area``, both orientations. Returns (height, width)."""
    out = set()
    for s in range(min_side, max_side + 1, step):
        o = min(max_side, (max_area // s) // step * step)
        if o >= min_side:
            out.add((s, o))
            out.add((o, s))
    return sorted(out, key=lambda hw: (hw[0] / hw[1], hw[0] * hw[1]))


def _literal_assignment(path: Path, name: str) -> Any | None:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def pixart_bins(resolution: int) -> list[tuple[int, int]]:
    """diffusers' ``ASPECT_RATIO_{resolution}_BIN`` (PixArt-α/Σ; keys h/w, values [height, width]) as
    (height, width) pairs. Read from the installed diffusers' source (a literal dict) to avoid the ~10 s
    import of its pipelines; falls back to importing the module if the file's layout has changed."""
    name = f"ASPECT_RATIO_{int(resolution)}_BIN"
    table = None
    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LookupError(f"the PixArt bucket table {name} comes from diffusers, which is not installed")
    for base in spec.submodule_search_locations or []:
        f = Path(base) / "pipelines" / "pixart_alpha" / "pipeline_pixart_alpha.py"
        if f.is_file():
            table = _literal_assignment(f, name)
            if table is not None:
                break
    if table is None:
        try:
            mod = importlib.import_module("diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha")
            table = getattr(mod, name)
        except (ImportError, AttributeError) as e:
            raise LookupError(f"diffusers has no PixArt bucket table {name} ({e})") from None
    return [(int(v[0]), int(v[1])) for v in table.values()]
