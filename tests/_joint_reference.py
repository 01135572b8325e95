"""A naive joint attention for the joint-attention tests, written from first principles (RMS norms and RoPE by hand,
the concatenation order read from diffusers' processors: FLUX text first, SD3 image first, one float64 softmax)."""
import torch


def _rms(x, norm):
    y = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + norm.eps)
    return y * norm.weight.double() if norm.weight is not None else y


def _rope(x, cos, sin):   # x [B, S, h, d]; pairs (2i, 2i+1) rotated, as FLUX's axes interleave
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return x * cos.double()[None, :, None] + rot * sin.double()[None, :, None]


def naive(attn, kind, block, inp, image_mask=None, grid=None):
    """P [B, h, S, S] (float64), n_text, and the module's image output recomputed from P (and its text output, for
    a call with a context: None otherwise). ``image_mask`` [N, N] bool restricts the image queries' image keys (text
    keys stay), for neighborhood attention on ``grid``."""
    hs, ehs, rope = inp["hidden_states"].double(), inp.get("encoder_hidden_states"), inp.get("image_rotary_emb")
    heads = attn.heads
    lin = lambda m, x: torch.nn.functional.linear(x, m.weight.double(), m.bias.double() if m.bias is not None else None)

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1)

    q, k, v = split(lin(attn.to_q, hs)), split(lin(attn.to_k, hs)), split(lin(attn.to_v, hs))
    q, k = _rms(q, attn.norm_q), _rms(k, attn.norm_k)
    n_text = 0
    if ehs is not None:
        ehs = ehs.double()
        eq, ek, ev = split(lin(attn.add_q_proj, ehs)), split(lin(attn.add_k_proj, ehs)), split(lin(attn.add_v_proj, ehs))
        eq, ek = _rms(eq, attn.norm_added_q), _rms(ek, attn.norm_added_k)
        n_text = ehs.shape[1]
        if kind == "flux":   # text first
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        else:                # image first
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
    if rope is not None:
        q, k = _rope(q, *rope), _rope(k, *rope)
    d = q.shape[-1]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / d ** 0.5
    seq = s.shape[-1]
    if image_mask is not None:
        n = grid[0] * grid[1]
        nt = seq - n
        img = slice(nt, seq) if kind == "flux" else slice(0, n)
        allowed = torch.ones(seq, seq, dtype=torch.bool)
        rows = allowed[img]
        rows[:, img] = image_mask
        allowed[img] = rows
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).detach()
    out = torch.einsum("bhqk,bkhd->bqhd", p, v).flatten(2)
    txt_out = None
    if ehs is not None:
        img = out[:, n_text:] if kind == "flux" else out[:, :out.shape[1] - n_text]
        txt = out[:, :n_text] if kind == "flux" else out[:, out.shape[1] - n_text:]
        if kind == "flux" or not attn.context_pre_only:
            txt_out = lin(attn.to_add_out, txt)
        out = lin(attn.to_out[0], img)
    elif not getattr(attn, "pre_only", False):
        out = lin(attn.to_out[0], out)
    return p, n_text, out, txt_out
