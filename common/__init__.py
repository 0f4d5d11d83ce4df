"""Pieces every role of the kit (training, inference, client, operator scripts) imports.

No role package owns this one and it imports none of them: the wire contract and its error table,
the artefact format, S3 locations and S3 errors, file helpers, the SageMaker job layout, the
operator scripts' options, exit codes.
"""
