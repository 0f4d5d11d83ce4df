"""Local mode: SageMaker's and S3's moving parts on one machine, for the demo, bench and tests.

An embedded S3 (``s3_server``), the asynchronous inference front end and its service-model
checks (``runtime``, ``api_model``), the training job (``training_job``), the endpoint
(``endpoint``), the whole stack as users bring it up (``stack``), ``make demo`` (``demo``) and
the process helpers they share (``processes``). It sits above the roles (it runs ``serve`` and
the training script as SageMaker would) and is never part of an image.
"""
