"""Errors raised by the training half; every message says how to fix the input.

Tree::

    TrainingError (ValueError)          bad input to a training job; exit code 1 + failure file
    ├── ConfigurationError              missing/invalid paths (model dir, channel, output dir)
    ├── DataError                       unreadable, mismatched, non-numeric or non-finite data
    └── HyperparameterError             unknown model type, unknown or invalid hyperparameter
    LaunchConfigError (ValueError)      start_training.py settings incomplete or invalid
    LaunchError (RuntimeError)          start_training.py could not run or package a job
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


class LaunchError(RuntimeError):
    """start_training.py could not launch, run or package a training job."""


class LaunchConfigError(ValueError):
    """start_training.py was given incomplete or invalid settings (all problems listed)."""
