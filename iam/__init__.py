"""Least-privilege IAM policy templates and their renderer (``python -m iam.render``)."""
