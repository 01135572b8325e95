"""Latency of every token mixer of the paper's Table 2 (SDPA, NA, window attention, LinFusion, ΔConv K=13/25 in
PyTorch and Triton), forward and forward+backward, ratios to SDPA from the same run. The benchmark lives in the
package (:func:`aconvlib.book.benchmarks.bench_mixers`, also ``aconv bench-mixers``); this script runs it."""
from aconvlib.book.benchmarks import main_mixers

if __name__ == "__main__":
    main_mixers()
