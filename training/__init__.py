"""Training half of the kit: fit, compile and package concrete-ml models (runs in SageMaker)."""
