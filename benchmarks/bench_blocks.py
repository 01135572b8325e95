"""Module-level latency and peak memory: SDPA vs ΔConvBlock (torch, Triton). The benchmark lives in the
package (:mod:`aconvlib.mixers.benchmark`, also ``aconv bench-blocks``); this script runs it."""
from aconvlib.mixers.benchmark import main

if __name__ == "__main__":
    main()
