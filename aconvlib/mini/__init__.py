"""The embedded domain: the procedural dataset, the small text-to-image models ``mini-sd`` and
``mini-dit`` trained by this project (shipped as package data), their evaluator, training and
distillation data.

Sits above :mod:`aconvlib.training` (its trainers are tasks of the one run loop) and below the book.
The registry (:mod:`aconvlib.models.registry`) knows these models by name and loads them through
their ``model_index.json``, which names :class:`MiniPipeline`.
"""
from __future__ import annotations

from .distill import adapter_dir, distill_batches, distill_mini, mini_prediction_gap, read_log
from .evaluate import AttributeClassifier, classifier_accuracy, classifier_dir, evaluate_model
from .intervals import adherence_estimate, fdd_estimate, paired_difference
from .pipeline import MiniPipeline
from .tokenizer import WordTokenizer

__all__ = ["AttributeClassifier", "MiniPipeline", "WordTokenizer", "adapter_dir", "adherence_estimate",
           "classifier_accuracy", "classifier_dir", "distill_batches", "distill_mini", "evaluate_model", "fdd_estimate",
           "mini_prediction_gap", "paired_difference", "read_log"]
