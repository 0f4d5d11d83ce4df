"""Errors raised by the training half; every message says how to fix the input.

Tree::

    TrainingError (ValueError)          bad input to a training job; exit code 2 + failure file
    ├── ConfigurationError              missing/invalid paths (model dir, channel, output dir)
    ├── DataError                       unreadable, mismatched, non-numeric or non-finite data
    └── HyperparameterError             unknown model type, unknown or invalid hyperparameter
"""

from __future__ import annotations


class TrainingError(ValueError):
    """A training job's input is unusable; the message says the fix."""


class ConfigurationError(TrainingError):
    """A directory or path the job needs is missing or unusable."""


class DataError(TrainingError):
    """The training data cannot be used as given."""


class HyperparameterError(TrainingError):
    """The model type or one of its hyperparameters is invalid."""
