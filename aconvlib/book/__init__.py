"""The book (the layer above everything but the CLI): the papermill runner and HTML build
(:mod:`~aconvlib.book.runner`), the capture studies shared by the locality chapters
(:mod:`~aconvlib.book.studies`), figures (:mod:`~aconvlib.book.plotting`), the embedded models'
training report (:mod:`~aconvlib.book.training_report`) and the chapters' common setup
(:mod:`~aconvlib.book.setup`).
"""
from .runner import ChapterError, build_html, check_offline, execute_chapter, load_profile, run_book, select_chapters

__all__ = ["ChapterError", "build_html", "check_offline", "execute_chapter", "load_profile", "run_book",
           "select_chapters"]
