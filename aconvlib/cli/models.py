"""``aconv models`` and ``aconv layers``: the registry and a model's self-attention layers."""
from __future__ import annotations

from .options import latent_grid, known_model, positive


def _list(args) -> None:
    from ..models import list_models

    print(f"{'name':<20} {'family':<6} {'px':>5}  source")
    for s in list_models():
        src = f"{s.local_dir} (embedded)" if s.embedded else s.hub_id
        print(f"{s.name:<20} {s.family:<6} {s.default_px:>5}  {src}")
        if s.description:
            print(f"{'':<20} {s.description}")


def _layers(args) -> None:
    from ..models import get_spec, load_denoiser, self_attention_layers

    spec = get_spec(args.model)
    px = args.px or spec.default_px
    grid = latent_grid(spec, px)
    den = load_denoiser(args.model, weights=False, device="meta")
    for l in self_attention_layers(den, grid):
        print(f"{l.name:<70} grid {l.grid[0]}x{l.grid[1]}  heads {l.heads}  head_dim {l.head_dim}")


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_list)
    q = sub.add_parser("layers", help="list a model's self-attention layers and token grids")
    q.add_argument("model", type=known_model)
    q.add_argument("--px", type=positive(), default=None, help="image size in pixels (default: the model's)")
    q.set_defaults(func=_layers)
