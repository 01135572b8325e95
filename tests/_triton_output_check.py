"""Why the stored H100 check printed an output difference of exactly 0.0 (chapter 6): run in a subprocess with
TRITON_INTERPRET=1 by tests/test_triton_check.py; prints one JSON line per case."""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from aconvlib.mixers.timing import check_triton  # noqa: E402
from aconvlib.mixers.deltaconv import DeltaConvBlock  # noqa: E402
from aconvlib.mixers.kernels import triton_ops as T  # noqa: E402
from aconvlib.mixers.kernels import reference as R  # noqa: E402


def sequential_dwconv(x, w):
    """Depthwise conv as one fp32 sum over the taps in row-major order, rounded once to x's dtype."""
    k, (b, h, wd, c) = w.shape[0], x.shape
    xp = torch.nn.functional.pad(x.float().permute(0, 3, 1, 2), (k // 2,) * 4).permute(0, 2, 3, 1)
    acc = torch.zeros(b, h, wd, c)
    for i in range(k):
        for j in range(k):
            acc = acc + xp[:, i:i + h, j:j + wd, :] * w[i, j].float()
    return acc.to(x.dtype)


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(2, 9, 8, 24).half()
    w = ((torch.rand(5, 5, 24) * 2 - 1) / 5).half()
    yt, ys, yr = T.dwconv2d(x, w), sequential_dwconv(x, w), R.dwconv2d(x, w)
    print(json.dumps({"case": "dwconv fp16", "triton_vs_sequential_max": float((yt.float() - ys.float()).abs().max()),
                      "triton_vs_torch_cpu_max": float((yt.float() - yr.float()).abs().max())}), flush=True)
    for dt in ("float32", "float16"):
        torch.manual_seed(1)
        blk = DeltaConvBlock(64, 5).to(getattr(torch, dt))
        xb = torch.randn(2, 10 * 10, 64).to(getattr(torch, dt))
        print(json.dumps({"case": f"check_triton {dt}", **check_triton(blk, xb, (10, 10))}), flush=True)
