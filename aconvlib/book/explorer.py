"""The offline attention explorer: one standalone HTML page to pick a query token and see its attention.

A reader picks a model, a self-attention layer and a group of sampling steps, then clicks (or, with
"follow the pointer", hovers) a token of the generated image and sees

(a) that query's row of the captured map ``A[q, :]`` (head-, step- and CFG-cond-averaged, one image; see
    :mod:`aconvlib.analysis.capture`) over the image,
(b) its Butterworth high-pass map (signed, ``norm="none"`` of :func:`aconvlib.analysis.locality.highpass`,
    computed in the page from the stored row), and
(c) its ASM curve (:func:`~aconvlib.analysis.locality.asm_curve`, per query), the ASM curve of its
    normalized high-pass map, and the uniform map's ASM at the same query (clipped windows), all computed here
    in Python from the captured (unquantized) row.

Data come from :func:`aconvlib.book.studies.capture_study`'s cache (``<run_dir>/captures``): chapter 2's
one-image captures are reused as the "all steps" group, and the "early" / "late" halves of sampling are
captures of the same image with ``capture_steps`` set (generated once for the embedded models, then cached).
Models named in ``models`` must be embedded or have captures in the run folder; any other model with one-image
captures in the run folder is added.

Storage (what "exactly that query's row" means). Each offered query's row is stored as uint8, quantized per row:
``u = round(255 · a / max(a))``, shown as ``u · max(a) / 255``, so every shown value is within half a step,
``max(a) / 510``, of the captured one; the page prints the step. ASM curves are stored as uint16 (step 1/65535).
Large grids offer a subsample of queries (every ``s``-th row and column, ``s`` chosen so that the page stays
under ``max_bytes``); a tap selects the offered query of its ``s × s`` block, and the page marks and names it.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..analysis import locality as L
from ..models import get_spec
from .studies import CaptureStudy, capture_study, default_prompts

__all__ = ["ExplorerModel", "build_explorer", "default_page_path", "explorer_payload", "find_captures", "quantize_rows", "step_groups"]

GroupSpec = Union[Sequence[str], Mapping[str, Optional[Sequence[int]]]]
MAX_BYTES = 4_000_000   # stored rows and curves, before base64 (x 4/3 in the page; Bokeh adds ~1.3 MB)


def step_groups(groups: GroupSpec, steps: int) -> dict[str, Optional[list[int]]]:
    """Label → step indices (None: all). Names ``"all"``, ``"early"`` (first half), ``"late"`` (second half), or
    a mapping of labels to explicit step lists."""
    if isinstance(groups, Mapping):
        return {str(k): (None if v is None else [int(s) for s in v]) for k, v in groups.items()}
    half = steps // 2
    named = {"all": (f"all {steps} steps", None),
             "early": (f"early: steps 0–{half - 1}", list(range(0, half))),
             "late": (f"late: steps {half}–{steps - 1}", list(range(half, steps)))}
    out = {}
    for g in groups:
        if g not in named:
            raise ValueError(f"unknown step group {g!r}: use 'all', 'early', 'late' or a mapping label → steps")
        label, sel = named[g]
        out[label] = sel
    return out


def _steps_label(sel: Optional[list], steps: int) -> str:
    if sel is None:
        return f"all {steps} steps"
    if sel == list(range(sel[0], sel[-1] + 1)):
        return f"steps {sel[0]}–{sel[-1]}"
    return "steps " + ",".join(map(str, sel))


def quantize_rows(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-row uint8 quantization of non-negative rows [Q, N]: ``(u [Q, N] uint8, scale [Q] float32)``, where
    ``u · scale / 255`` reconstructs each row within ``scale / 510`` (scale = the row's maximum)."""
    r = rows.double().cpu()
    scale = r.max(1).values.clamp(min=1e-30).float()          # [Q], stored as float32
    u = torch.round(r / scale.double()[:, None] * 255).clamp(0, 255).to(torch.uint8)
    return u.numpy(), scale.numpy()


def dequantize_rows(u: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_rows` [Q, N] float64 (what the page shows)."""
    return u.astype(np.float64) * scale.astype(np.float32).astype(np.float64)[:, None] / 255.0


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def _u16(curves) -> np.ndarray:
    return np.round(np.clip(np.asarray(curves, dtype=np.float64), 0, 1) * 65535).astype(np.uint16)


@dataclass
class ExplorerModel:
    """One model's studies for the page: ``groups`` label → a one-image :class:`CaptureStudy` of the same image."""

    model: str
    groups: dict


def find_captures(run_dir) -> dict[str, list[tuple[Path, dict]]]:
    """One-image captures in ``<run_dir>/captures``, per model: model → [(path, params)] (loaded lazily, mmap)."""
    found: dict[str, list] = {}
    folder = Path(run_dir) / "captures"
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        if ".analysis-" in path.name:
            continue
        try:
            d = torch.load(path, weights_only=False, mmap=True)
        except Exception:      # a file being written or from an incompatible version: not a capture to offer
            continue
        if not isinstance(d, dict) or "params" not in d or len(d.get("prompts", [])) != 1:
            continue
        found.setdefault(d["model"], []).append((path, d["params"]))
    return found


def _from_cache(model: str, entries: list, steps_hint: Optional[int] = None) -> ExplorerModel:
    """Group a model's cached one-image captures by setting; keep the setting with most step groups (ties: the
    model's first default prompt, then file order)."""
    settings: dict = {}
    for path, p in entries:
        key = json.dumps({k: v for k, v in p.items() if k not in ("capture_steps", "batch_size")}, sort_keys=True,
                         default=str)
        settings.setdefault(key, []).append((path, p))
    first = default_prompts(model, 1)[0]
    best = max(settings.values(), key=lambda e: (len(e), e[0][1]["prompts"][0] == first))
    groups = {}
    for path, p in sorted(best, key=lambda e: (e[1]["capture_steps"] is not None, e[1]["capture_steps"] or [])):
        d = torch.load(path, weights_only=False, mmap=True)
        study = CaptureStudy(**d)
        study.path = str(path)
        groups[_steps_label(p["capture_steps"], p["steps"])] = study
    return ExplorerModel(model, groups)


def _strides(models: list[ExplorerModel], max_queries: int, max_bytes: int) -> dict:
    """(model, layer name) → query stride: ``ceil(sqrt(N / max_queries))``, raised on the costliest layers until
    the stored rows and curves fit ``max_bytes``."""
    stride, cost = {}, {}
    for em in models:
        study = next(iter(em.groups.values()))
        for info in study.layers:
            h, w = info["grid"]
            n, nk = h * w, len(L.odd_kernel_sizes((h, w)))
            stride[(em.model, info["name"])] = max(1, math.ceil(math.sqrt(n / max_queries)))
            # per offered query: N bytes of row + 4 scale + 2·nK·2 curves per group, plus nK·2 uniform once
            cost[(em.model, info["name"])] = (h, w, len(em.groups) * (n + 4 + 4 * nk) + 2 * nk)

    def n_queries(key, s):
        h, w, _ = cost[key]
        return len(range(s // 2, h, s)) * len(range(s // 2, w, s))

    def total():
        return sum(n_queries(k, s) * cost[k][2] for k, s in stride.items())

    while total() > max_bytes:
        key = max(stride, key=lambda k: n_queries(k, stride[k]) * cost[k][2])
        if stride[key] >= max(cost[key][:2]):
            raise ValueError(f"the explorer cannot fit {max_bytes} bytes even with one query per layer; "
                             "raise max_bytes or pass fewer models")
        stride[key] += 1
    return stride


def _layer_payload(em: ExplorerModel, info: dict, stride: int, cutoff: float, order: int) -> dict:
    name, (h, w) = info["name"], tuple(info["grid"])
    n = h * w
    rows_idx = list(range(stride // 2, h, stride))
    cols_idx = list(range(stride // 2, w, stride))
    q = torch.tensor([r * w + c for r in rows_idx for c in cols_idx])            # [Q] offered queries, raster
    ks = L.odd_kernel_sizes((h, w))
    uni = torch.full((len(q), n), 1.0 / n, dtype=torch.float64)
    _, uni_q = L.asm_curve(uni, (h, w), ks, per_query=True, query_index=q)      # [Q, nK]
    per_group = []
    for study in em.groups.values():
        A = study.maps[name].float()                                            # [N, N]
        rows = A[q]                                                             # [Q, N]
        u, scale = quantize_rows(rows)
        _, asm_q = L.asm_curve(rows, (h, w), ks, per_query=True, query_index=q)  # [Q, nK]
        hp = L.highpass(rows, (h, w), cutoff, order, norm="abs")               # [Q, N], rows sum to 1 (or 0)
        _, hp_q = L.asm_curve(hp, (h, w), ks, per_query=True, query_index=q)   # [Q, nK]
        per_group.append(dict(a=_b64(u), s=_b64(scale), asm=_b64(_u16(asm_q)), hpasm=_b64(_u16(hp_q))))
    return dict(name=name, label=info["label"], grid=[h, w], stride=stride, qr=rows_idx, qc=cols_idx, ks=ks,
                uni=_b64(_u16(uni_q)), groups=per_group)


def explorer_payload(models: list[ExplorerModel], *, max_queries: int = 256, max_bytes: int = MAX_BYTES,
                     cutoff: float = 0.1, order: int = 2) -> dict:
    """The page's data (JSON-ready): per model its image, prompt, step groups and per layer the offered queries'
    quantized rows (base64) and curves. See the module docstring for the encoding."""
    strides = _strides(models, max_queries, max_bytes)
    out = []
    for em in models:
        study = next(iter(em.groups.values()))
        for other in em.groups.values():
            if other.prompts != study.prompts or other.params["seed"] != study.params["seed"]:
                raise ValueError(f"{em.model}: the step groups must be captures of the same image")
        out.append(dict(model=em.model, prompt=study.prompts[0], describe=study.describe(),
                        groups=list(em.groups), cutoff=cutoff, order=order,
                        layers=[_layer_payload(em, info, strides[(em.model, info["name"])], cutoff, order)
                                for info in study.layers]))
    return dict(models=out)


def _display_image(study: CaptureStudy, max_px: int = 256) -> np.ndarray:
    """The generated image as [H, W] uint32 RGBA for Bokeh (row 0 = top row), downsized to ``max_px``."""
    from PIL import Image

    img = Image.fromarray(np.asarray(study.images[0], dtype=np.uint8))
    if max(img.size) > max_px:
        img.thumbnail((max_px, max_px))
    rgba = np.asarray(img.convert("RGBA"))
    return np.ascontiguousarray(rgba).view(np.uint32)[:, :, 0]


def _collect(models, run_dir, *, groups, steps, guidance_scale, height, width, seed, device, dtype, weights,
             discover, generate, memory_budget_gb, verbose) -> list[ExplorerModel]:
    found = find_captures(run_dir) if (discover or any(not get_spec(m).embedded for m in models)) else {}
    out = []
    for m in models:
        spec = get_spec(m)       # UnknownModelError names the known models
        if spec.embedded:
            if not generate:
                if spec.name not in found:
                    raise FileNotFoundError(f"no captures of {spec.name} in {Path(run_dir) / 'captures'}: chapter 2 "
                                            "makes them (`aconv book 02 --profile smoke`), or pass generate=True")
                out.append(_from_cache(spec.name, found[spec.name]))
                continue
            prompt = default_prompts(spec.name, 1)[0]
            gen = dict(steps=steps, guidance_scale=guidance_scale, height=height, width=width, seed=seed,
                       device=device, dtype=dtype, memory_budget_gb=memory_budget_gb, output_dir=run_dir,
                       weights=weights, verbose=verbose)
            out.append(ExplorerModel(spec.name, {label: capture_study(spec.name, [prompt], capture_steps=sel, **gen)
                                                 for label, sel in step_groups(groups, steps).items()}))
        else:
            if spec.name not in found:
                raise FileNotFoundError(f"no one-image captures of {spec.name} in {Path(run_dir) / 'captures'}: "
                                        "chapter 2 makes them with the model's weights (e.g. `aconv book 02 --profile "
                                        "full`, with output_dir pointing at this run folder)")
            out.append(_from_cache(spec.name, found[spec.name]))
    if discover:
        names = {em.model for em in out}
        out += [_from_cache(m, entries) for m, entries in sorted(found.items()) if m not in names]
    if not out:
        raise FileNotFoundError(f"no models to explore: pass models= or make captures in {run_dir} "
                                "(`aconv book 02 --profile smoke`)")
    return out


# The page's logic (one copy, prepended to every callback; the decoded data are cached on ``window``).
_JS = r"""
const explorer = (() => {
  if (window.__aconv_explorer === undefined)
    window.__aconv_explorer = {data: JSON.parse(payload.data.payload[0]), cache: new Map()};
  const S = window.__aconv_explorer;
  function bytes(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function cached(key, make) {
    if (!S.cache.has(key)) S.cache.set(key, make());
    return S.cache.get(key);
  }
  function model_index() {
    const i = S.data.models.findIndex(m => m.model === models_sel.value);
    return i < 0 ? 0 : i;
  }
  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
  // Fourier transform of an h x w complex array along one axis (sign -1 forward, +1 inverse, unnormalized)
  function dft_axis(re, im, h, w, axis, sign) {
    const n = axis === 1 ? w : h, m = axis === 1 ? h : w;
    const cs = new Float64Array(n * n), sn = new Float64Array(n * n);
    for (let k = 0; k < n; k++) for (let t = 0; t < n; t++) {
      const ang = 2 * Math.PI * ((k * t) % n) / n;
      cs[k * n + t] = Math.cos(ang); sn[k * n + t] = sign * Math.sin(ang);
    }
    const oR = new Float64Array(h * w), oI = new Float64Array(h * w);
    for (let o = 0; o < m; o++) for (let k = 0; k < n; k++) {
      let sr = 0, si = 0;
      for (let t = 0; t < n; t++) {
        const idx = axis === 1 ? o * w + t : t * w + o, c = cs[k * n + t], s = sn[k * n + t];
        sr += re[idx] * c - im[idx] * s; si += re[idx] * s + im[idx] * c;
      }
      const out = axis === 1 ? o * w + k : k * w + o;
      oR[out] = sr; oI[out] = si;
    }
    return [oR, oI];
  }
  // Butterworth high-pass H(D) = 1 / (1 + (D0/D)^(2n)), H(0) = 0, D in cycles per token (as in
  // aconvlib.analysis.locality.butterworth_highpass); the signed filtered row (norm="none")
  function highpass(a, h, w, d0, order) {
    let [re, im] = dft_axis(a, new Float64Array(h * w), h, w, 1, -1);
    [re, im] = dft_axis(re, im, h, w, 0, -1);
    for (let u = 0; u < h; u++) for (let v = 0; v < w; v++) {
      const fy = Math.min(u, h - u) / h, fx = Math.min(v, w - v) / w, d = Math.sqrt(fy * fy + fx * fx);
      const g = d > 0 ? 1 / (1 + Math.pow(d0 / d, 2 * order)) : 0;
      re[u * w + v] *= g; im[u * w + v] *= g;
    }
    [re, im] = dft_axis(re, im, h, w, 0, 1);
    [re, im] = dft_axis(re, im, h, w, 1, 1);
    return re.map(v => v / (h * w));
  }
  function nested(flat, h, w) {   // an [h, w] BokehJS ndarray (row 0 = top row: the y axis points down)
    return Bokeh.require("core/util/ndarray").ndarray(Float64Array.from(flat), {dtype: "float64", shape: [h, w]});
  }
  function render() {
    const mi = model_index(), m = S.data.models[mi];
    const li = clamp(parseInt(layer_sel.value) || 0, 0, m.layers.length - 1);
    const gi = clamp(parseInt(group_sel.value) || 0, 0, m.groups.length - 1);
    const lay = m.layers[li], h = lay.grid[0], w = lay.grid[1], N = h * w, s = lay.stride;
    const fy = state.data.fy[0], fx = state.data.fx[0];
    const r = clamp(Math.floor(fy * h), 0, h - 1), c = clamp(Math.floor(fx * w), 0, w - 1);
    const i = clamp(Math.floor(r / s), 0, lay.qr.length - 1), j = clamp(Math.floor(c / s), 0, lay.qc.length - 1);
    const qr = lay.qr[i], qc = lay.qc[j], qi = i * lay.qc.length + j;
    const d = cached(`${mi}/${li}/${gi}`, () => {
      const g = lay.groups[gi];
      return {a: bytes(g.a), s: new Float32Array(bytes(g.s).buffer), asm: new Uint16Array(bytes(g.asm).buffer),
              hpasm: new Uint16Array(bytes(g.hpasm).buffer)};
    });
    const uni = cached(`${mi}/${li}/uni`, () => new Uint16Array(bytes(lay.uni).buffer));
    const scale = d.s[qi], row = new Float64Array(N);
    for (let k = 0; k < N; k++) row[k] = d.a[qi * N + k] * scale / 255;
    map_src.data = {image: [nested(row, h, w)], x: [0], y: [0], dw: [1], dh: [1]};
    map_cm.low = 0; map_cm.high = scale;
    const hp = highpass(row, h, w, m.cutoff, m.order);
    let top = 0;
    for (const v of hp) top = Math.max(top, Math.abs(v));
    hp_src.data = {image: [nested(hp, h, w)], x: [0], y: [0], dw: [1], dh: [1]};
    hp_cm.low = -(top || 1); hp_cm.high = top || 1;
    marker.data = {x: [(qc + 0.5) / w], y: [(qr + 0.5) / h], w: [1 / w], h: [1 / h]};
    const nK = lay.ks.length, k3 = lay.ks.indexOf(3);
    const cur = {k: lay.ks.slice(), asm: [], hpasm: [], uni: []};
    for (let k = 0; k < nK; k++) {
      cur.asm.push(d.asm[qi * nK + k] / 65535); cur.hpasm.push(d.hpasm[qi * nK + k] / 65535);
      cur.uni.push(uni[qi * nK + k] / 65535);
    }
    curves.data = cur;
    images.forEach((im, k) => { im.visible = k === mi; });
    state.data = {model: [m.model], layer: [li], group: [gi], fy: [fy], fx: [fx], row: [qr], col: [qc],
                  query: [qr * w + qc]};
    const fmt = v => v.toPrecision(3);
    info.text = `<b>${m.model}</b>, layer <b>${lay.label}</b> (${h}×${w} tokens), <b>${m.groups[gi]}</b>; ` +
      `prompt: “${m.prompt}”.<br>Query token (row ${qr}, column ${qc}) = index ${qr * w + qc}` +
      (s > 1 ? ` (this layer offers one query per ${s}×${s} block of tokens, stride ${s}: a click selects ` +
               `the marked query of its block)` : "") + `. Its largest weight ${fmt(scale)} = ${fmt(scale * N)}× the uniform ` +
      `1/${N}; shown values are within ${fmt(scale / 510)} (half the uint8 step ${fmt(scale / 255)}).` +
      (k3 >= 0 ? ` ASM(3×3): ${fmt(cur.asm[k3])} vs uniform ${fmt(cur.uni[k3])}; high-pass ` +
                 `${fmt(cur.hpasm[k3])}.` : "") +
      ` High-pass: Butterworth, cutoff ${m.cutoff} cycles/token, order ${m.order}.`;
  }
  function tap(x, y) {
    if (x == null || y == null || !(x >= 0 && x <= 1 && y >= 0 && y <= 1)) return;
    state.data = {...state.data, fx: [x], fy: [y]};
    render();
  }
  function model_changed() {
    const m = S.data.models[model_index()];
    layer_sel.options = m.layers.map((l, i) => [String(i), `${l.label} (${l.grid[0]}×${l.grid[1]})`]);
    group_sel.options = m.groups.map((g, i) => [String(i), g]);
    if (parseInt(layer_sel.value) >= m.layers.length) layer_sel.value = "0";
    if (parseInt(group_sel.value) >= m.groups.length) group_sel.value = "0";
    render();
  }
  return {render, tap, model_changed};
})();
"""


def build_explorer(out_html, models: Sequence[str] = ("mini-sd", "mini-dit"), run_dir="runs/smoke", *,
                   groups: GroupSpec = ("all", "early", "late"), steps: int = 20, guidance_scale: float = 4.0,
                   height: Optional[int] = None, width: Optional[int] = None, seed: int = 0, device="cpu",
                   dtype="float32", weights: str = "trained", discover: bool = True, generate: bool = True,
                   memory_budget_gb: float = 8.0, max_queries: int = 256, max_bytes: int = MAX_BYTES,
                   cutoff: float = 0.1, order: int = 2, title: str = "Attention explorer",
                   verbose: bool = True) -> Path:
    """Write the explorer as one standalone HTML file (Bokeh, JavaScript inlined, no server, nothing fetched).

    Args:
        out_html: the file to write (its folder is created).
        models: models to show; embedded ones (``mini-sd``, ``mini-dit``) are captured if their cache entries are
            missing (``generate=True``), others need one-image captures in ``run_dir`` (chapter 2 makes them).
        run_dir: a chapters' ``output_dir`` (its ``captures/`` is :func:`capture_study`'s cache).
        groups: step groups ("all", "early", "late") or label → step indices; for the embedded models.
        steps, guidance_scale, height, width, seed, device, dtype, weights: the captures' settings; chapter 2's
            (notebooks/profiles.yml) make the "all" group a cache hit.
        discover: add every other model with one-image captures in ``run_dir``.
        max_queries, max_bytes: offered queries per layer (at most), and the stored data's size limit.
        cutoff, order: the Butterworth high-pass (cycles per token, order), as in chapter 3.

    Returns:
        The written path.
    """
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import (Checkbox, ColumnDataSource, CustomJS, Div, LinearColorMapper, Range1d, Select)
    from bokeh.events import MouseMove, Tap
    from bokeh.palettes import RdBu11, Viridis256
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    ems = _collect(list(models), run_dir, groups=groups, steps=steps, guidance_scale=guidance_scale, height=height,
                   width=width, seed=seed, device=device, dtype=dtype, weights=weights, discover=discover,
                   generate=generate, memory_budget_gb=memory_budget_gb, verbose=verbose)
    payload = explorer_payload(ems, max_queries=max_queries, max_bytes=max_bytes, cutoff=cutoff, order=order)
    first = payload["models"][0]

    def frame(title_, name):
        p = figure(title=title_, name=name, width=290, height=340, x_range=Range1d(0, 1),
                   y_range=Range1d(1, 0), tools="tap,reset,save", toolbar_location="below")
        # y points down
        p.axis.visible = False
        p.grid.visible = False
        return p

    # (a) the image with the query's map over it; (b) the high-pass map; (c) the ASM curves
    p_img = frame("attention of the query (scaled to its maximum)", "explorer_image_plot")
    image_renderers = {}
    for em in ems:
        rgba = _display_image(next(iter(em.groups.values())))                  # [H, W] uint32
        r = p_img.image_rgba(image=[rgba], x=0, y=0, dw=1, dh=1, name=f"image_{em.model}",
                             visible=em.model == first["model"])
        image_renderers[em.model] = r
    map_src = ColumnDataSource(dict(image=[np.zeros((1, 1))], x=[0], y=[0], dw=[1], dh=[1]), name="explorer_map")
    map_cm = LinearColorMapper(palette=Viridis256, low=0, high=1, name="explorer_map_colors")
    map_r = p_img.image(image="image", x="x", y="y", dw="dw", dh="dh", source=map_src, color_mapper=map_cm,
                        global_alpha=0.55, name="explorer_map_renderer")
    p_hp = frame("its high-pass map (Butterworth, signed)", "explorer_hp_plot")
    hp_src = ColumnDataSource(dict(image=[np.zeros((1, 1))], x=[0], y=[0], dw=[1], dh=[1]), name="explorer_hp")
    hp_cm = LinearColorMapper(palette=list(reversed(RdBu11)), low=-1, high=1, name="explorer_hp_colors")
    p_hp.image(image="image", x="x", y="y", dw="dw", dh="dh", source=hp_src, color_mapper=hp_cm)
    marker = ColumnDataSource(dict(x=[0.5], y=[0.5], w=[0.1], h=[0.1]), name="explorer_query")
    for p in (p_img, p_hp):
        p.rect("x", "y", "w", "h", source=marker, fill_alpha=0, line_color="cyan", line_width=2)
        p.scatter("x", "y", source=marker, marker="cross", size=12, color="cyan")
    p_asm = figure(title="ASM(K) at this query", name="explorer_asm_plot", width=290, height=340,
                   x_axis_label="window K (tokens)", y_axis_label="share of the row inside K×K",
                   y_range=Range1d(0, 1.02), tools="hover,reset,save", toolbar_location="below")
    curves = ColumnDataSource(dict(k=[1], asm=[0], hpasm=[0], uni=[0]), name="explorer_curves")
    p_asm.line("k", "asm", source=curves, legend_label="query", color="#1f77b4", line_width=2)
    p_asm.line("k", "hpasm", source=curves, legend_label="high-pass", color="#d62728", line_width=2)
    p_asm.line("k", "uni", source=curves, legend_label="uniform map", color="gray", line_dash="dashed", line_width=2)
    p_asm.legend.location = "bottom_right"

    models_sel = Select(title="model", value=first["model"], options=[m["model"] for m in payload["models"]],
                        name="explorer_model", width=200)
    layer_sel = Select(title="self-attention layer", value="0", name="explorer_layer", width=200,
                       options=[(str(i), f"{lay['label']} ({lay['grid'][0]}×{lay['grid'][1]})")
                                for i, lay in enumerate(first["layers"])])
    group_sel = Select(title="sampling steps", value="0", name="explorer_group", width=200,
                       options=[(str(i), g) for i, g in enumerate(first["groups"])])
    follow = Checkbox(label="follow the pointer", active=False, name="explorer_follow")
    info = Div(text="", name="explorer_info", styles={"max-width": "900px"})
    state = ColumnDataSource(dict(model=[first["model"]], layer=[0], group=[0], fy=[0.5], fx=[0.5], row=[-1],
                                  col=[-1], query=[-1]), name="explorer_state")

    # one model holds the data, shared by reference by every callback (a string argument would be copied into each)
    data_src = ColumnDataSource(dict(payload=[json.dumps(payload, separators=(",", ":"))]), name="explorer_data")
    args = dict(payload=data_src, map_src=map_src, map_cm=map_cm, hp_src=hp_src,
                hp_cm=hp_cm, marker=marker, curves=curves, models_sel=models_sel, layer_sel=layer_sel,
                group_sel=group_sel, follow=follow, info=info, state=state,
                images=[image_renderers[m["model"]] for m in payload["models"]])
    js = _JS
    on_tap = CustomJS(args=args, code=js + "\nexplorer.tap(cb_obj.x, cb_obj.y);")
    on_move = CustomJS(args=args, code=js + "\nif (follow.active) explorer.tap(cb_obj.x, cb_obj.y);")
    on_model = CustomJS(args=args, code=js + "\nexplorer.model_changed();")
    on_other = CustomJS(args=args, code=js + "\nexplorer.render();")
    for p in (p_img, p_hp):
        p.js_on_event(Tap, on_tap)
        p.js_on_event(MouseMove, on_move)
    models_sel.js_on_change("value", on_model)
    layer_sel.js_on_change("value", on_other)
    group_sel.js_on_change("value", on_other)
    intro = Div(text=f"<b>{title}</b>: pick a model, a layer and the sampling steps, then click a token of the image. "
                     "Every shown row is the captured one within half its quantization step (uint8 per row).",
                styles={"max-width": "900px"})
    plots = row(p_img, p_hp, p_asm, styles={"flex-wrap": "wrap"})
    layout = column(intro, row(models_sel, layer_sel, group_sel, follow, styles={"flex-wrap": "wrap"}), plots, info)
    from bokeh.document import Document
    from bokeh.events import DocumentReady

    doc = Document()
    doc.add_root(layout)
    doc.js_on_event(DocumentReady, CustomJS(args=args, code=js + "\nexplorer.model_changed();"))  # first render
    html = file_html(doc, INLINE, title)
    # phones lay the page out at their own width (without this, a 980 px desktop layout, zoomed out)
    html = html.replace("<head>", '<head>\n<meta name="viewport" content="width=device-width, initial-scale=1">', 1)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    if verbose:
        print(f"[explorer] {out} ({out.stat().st_size / 1e6:.2f} MB): "
              + "; ".join(f"{m['model']} ({len(m['layers'])} layers, {len(m['groups'])} step groups)"
                          for m in payload["models"]))
    return out


def default_page_path(chapter_out) -> Path:
    """Where chapter 10 writes the page: the book's ``_extra/explorer.html`` (copied to the HTML book's root) when
    the chapter is executed into ``book/chapters`` or run by hand, else ``chapter_out/explorer.html`` (a ``ci-real``
    run or ``--out-dir`` keeps the book's page as it is)."""
    import os

    from .records import ENV_PATH
    from .runner import book_dir

    env = os.environ.get(ENV_PATH)
    book = book_dir()
    if not env or Path(env).parent.resolve() == (book / "chapters").resolve():
        return book / "_extra" / "explorer.html"
    return Path(chapter_out) / "explorer.html"
