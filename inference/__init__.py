"""Serving half of the kit: the FHE inference container (``serve``, the predictor, key cache).

The image holds this package and ``common/`` (the wire contract it answers, the artefact it
loads), nothing else.
"""
