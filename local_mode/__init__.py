"""Local mode: SageMaker's moving parts on one machine (embedded S3, async runtime)."""
