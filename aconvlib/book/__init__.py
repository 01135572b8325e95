"""The book (the layer above everything but the CLI): the papermill runner and HTML build
(:mod:`~aconvlib.book.runner`), the capture studies shared by the locality chapters
(:mod:`~aconvlib.book.studies`), figures (:mod:`~aconvlib.book.plotting`), the embedded models'
training report (:mod:`~aconvlib.book.training_report`), the chapters' common setup
(:mod:`~aconvlib.book.setup`), the memory check before any work (:mod:`~aconvlib.book.budget`), chapter 7's
real-model part (:mod:`~aconvlib.book.real_adapters`), the numbers each chapter records (:mod:`~aconvlib.book.records`) and their
comparison with reviewed references (:mod:`~aconvlib.book.regression`, ``aconv regress``).
The reproduction drivers live here too: the latency benchmarks, one harness for ``aconv bench-mixers`` and
``aconv bench-blocks`` (:mod:`~aconvlib.book.benchmarks`, tables in :mod:`~aconvlib.book.benchmark_tables`, module
shapes from the shipped configs in :mod:`~aconvlib.book.module_shapes`), Table 1 (:mod:`~aconvlib.book.table1`),
the per-model FLOP frames (:mod:`~aconvlib.book.flops_tables`),
chapter 8's comparison (:mod:`~aconvlib.book.comparison`, :mod:`~aconvlib.book.comparison_sections`); the labels
of typed comparison rows are made in :mod:`~aconvlib.book.labels` only.
"""
from .records import record
from .runner import ChapterError, build_html, check_offline, execute_chapter, load_profile, run_book, select_chapters

__all__ = ["ChapterError", "build_html", "check_offline", "execute_chapter", "load_profile", "record", "run_book",
           "select_chapters"]
