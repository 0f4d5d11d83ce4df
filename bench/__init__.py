"""``make bench``: latency, throughput and size measurements of the encrypted-inference path.

One run brings up the local stack the way users do (embedded S3, ``start_training.py --local``,
``deploy_endpoint.py --local``, :class:`client.EncryptedPredictor`) for three models side by
side, measures the in-process *limit* (``FHEModelServer.run`` + client encrypt/decrypt) and the
end-to-end async path, checks every FHE output against the clear quantised model, and writes
``bench/results/*.json``, ``bench/results/latency.png`` and the tables of docs/benchmark.md.
See :mod:`bench.cli` for the flags.
"""

from bench.check import OutputMismatchError, check_agreement
from bench.stats import Summary, summarize

__all__ = ["OutputMismatchError", "Summary", "check_agreement", "summarize"]
