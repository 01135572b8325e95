"""Module-level latency and peak memory: SDPA vs ΔConvBlock (torch, Triton). The benchmark lives in the
package (:mod:`aconvlib.book.benchmarks`, also ``aconv bench-blocks``); this script runs it."""
from aconvlib.book.benchmarks import main

if __name__ == "__main__":
    main()
