"""Chapter 7's primer: feature-level against output-level distillation on a toy small enough to solve exactly.

The toy has the shape of ΔConv distillation with everything but one layer frozen:

- **inputs** x: rows of ``length`` tokens (one channel), smooth random signals;
- **teacher layer**: an attention-like mixing matrix T (each row a probability distribution): a Gaussian bump of
  width ``sigma`` around the token itself (the local *context*) plus a share ``prior`` spread evenly over all tokens
  (the *prior*), so ``h = T x``;
- **frozen rest of the network**: a fixed matrix P with fewer rows than tokens (it reads only some directions of
  h), so ``y = P h``;
- **student layer**: a ΔConvBlock in one dimension and without the gate: a K-tap zero-padded convolution plus a
  pooling branch c·mean(x), ``h' = conv_K(x) + c·mean(x)``: K + 1 parameters, linear in them.

Distillation is then least squares, solved exactly: *feature-level* minimizes ‖h' − h‖² (paper Eq. 6), *output-level*
‖P h' − P h‖² (Eq. 7 without the noise and Min-SNR parts), *both* their sum. :func:`toy_distillation` reports, on
held-out inputs, the feature error and the output error of each student (relative to the teacher's), and of the
student without its pooling branch.
"""
from __future__ import annotations

__all__ = ["plot_toy_distillation", "toy_distillation"]


def _conv_matrix(length: int, kernel_size: int):
    """The design tensor D [K, L, L]: conv_K(x) with taps w = Σ_j w_j · D[j] @ x (zero padding K//2)."""
    import torch

    r = kernel_size // 2
    d = torch.zeros(kernel_size, length, length, dtype=torch.float64)
    for j in range(kernel_size):
        off = j - r
        for i in range(length):
            if 0 <= i + off < length:
                d[j, i, i + off] = 1.0
    return d


def _signals(n: int, length: int, gen):
    """``n`` smooth random rows (white noise blurred by a 5-tap box, then standardized)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(n, 1, length + 4, generator=gen, dtype=torch.float64)
    x = F.avg_pool1d(x, 5, stride=1)[:, 0]
    return (x - x.mean()) / x.std()


def toy_distillation(length: int = 32, kernel_size: int = 5, sigma: float = 1.5, prior: float = 0.4,
                     readout: int = 6, n_train: int = 512, n_test: int = 512, seed: int = 0) -> dict:
    """Fit the toy student with each loss (see the module docstring) and measure it on held-out inputs.

    Returns ``{"errors": DataFrame (student, loss) -> feature error, output error, both relative squared errors
    on held-out inputs; "teacher_row": T's middle row; "students": {name: the student's middle row}, "params":
    {name: taps and pooling coefficient}}``."""
    import pandas as pd
    import torch

    gen = torch.Generator().manual_seed(seed)
    L, K = int(length), int(kernel_size)
    i = torch.arange(L, dtype=torch.float64)
    bump = torch.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * sigma ** 2))
    T = (1 - prior) * bump / bump.sum(1, keepdim=True) + prior / L               # rows sum to 1
    P = torch.randn(readout, L, generator=gen, dtype=torch.float64) / L ** 0.5   # frozen: reads `readout` directions
    D = _conv_matrix(L, K)
    x_tr, x_te = _signals(n_train, L, gen), _signals(n_test, L, gen)

    def features(x, pooling: bool):                                             # [n, L, K(+1)]: h' = F @ theta
        cols = [torch.einsum("kij,nj->nik", D, x)]
        if pooling:
            cols.append(x.mean(1, keepdim=True).expand(-1, L).unsqueeze(-1))
        return torch.cat(cols, -1)

    def fit(loss: str, pooling: bool):
        f, h = features(x_tr, pooling), x_tr @ T.T
        rows_f, rows_o = f.reshape(-1, f.shape[-1]), torch.einsum("ol,nlp->nop", P, f).reshape(-1, f.shape[-1])
        tgt_f, tgt_o = h.reshape(-1), (h @ P.T).reshape(-1)
        a = {"feature": rows_f, "output": rows_o, "both": torch.cat([rows_f, rows_o])}[loss]
        b = {"feature": tgt_f, "output": tgt_o, "both": torch.cat([tgt_f, tgt_o])}[loss]
        return torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution[:, 0]

    def errors(theta, pooling: bool) -> dict:
        f, h = features(x_te, pooling), x_te @ T.T
        hs = f @ theta
        fe = float(((hs - h) ** 2).sum() / (h ** 2).sum())
        oe = float((((hs - h) @ P.T) ** 2).sum() / ((h @ P.T) ** 2).sum())
        return {"feature error": fe, "output error": oe}

    rows, students, params = [], {}, {}
    for pooling in (True, False):
        for loss in ("feature", "output", "both"):
            theta = fit(loss, pooling)
            name = f"{loss}-level" if loss != "both" else "feature + output"
            student = "conv + pooling branch" if pooling else "conv only"
            rows.append({"student": student, "loss": name, **errors(theta, pooling)})
            # the student's middle row: its response at token L/2 to every input token (an impulse per input)
            eye = torch.eye(L, dtype=torch.float64)
            students[(student, name)] = (features(eye, pooling) @ theta)[:, L // 2]
            params[(student, name)] = theta.tolist()
    return {"errors": pd.DataFrame(rows), "teacher_row": T[L // 2], "students": students, "params": params,
            "setup": {"length": L, "kernel_size": K, "sigma": sigma, "prior": prior, "readout": readout,
                      "n_train": n_train, "n_test": n_test}}


def plot_toy_distillation(result: dict):
    """Left: the teacher's middle row and the students' (conv + pooling branch); right: held-out errors."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(result["teacher_row"].numpy(), "k-", lw=2, label="teacher row (bump + prior)")
    for (student, loss), row in result["students"].items():
        if student == "conv + pooling branch":
            a.plot(row.numpy(), "--" if loss == "output-level" else "-", label=f"student, {loss}")
    a.set_xlabel("input token")
    a.set_ylabel("weight on the middle output")
    a.legend(fontsize=7)
    e = result["errors"]
    labels = [f"{r.student}\n{r.loss}" for r in e.itertuples()]
    pos = np.arange(len(e))
    b.bar(pos - 0.2, e["feature error"], 0.4, label="feature error")
    b.bar(pos + 0.2, e["output error"], 0.4, label="output error")
    b.set_xticks(pos, labels, fontsize=6, rotation=30, ha="right")
    b.set_yscale("log")
    b.set_ylabel("relative squared error, held out (log)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
