"""gunicorn's entry point: ``gunicorn 'inference.wsgi:build_app()'``.

gunicorn calls :func:`build_app` in each worker after forking, so every worker loads its own
circuit; the load runs in a background thread so the worker boots (and answers ``/ping`` with
503) while concrete compiles, instead of being killed by gunicorn's boot timeout.
"""

from __future__ import annotations

import logging

from flask import Flask

from inference.predictor import create_app
from inference.settings import Settings

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def build_app() -> Flask:
    """Configure logging and build the app from the environment."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_app(Settings.from_env(), background_load=True)
