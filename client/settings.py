"""Client settings read from the environment, in one place (the CLI's defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"
ENV_RUNTIME_ENDPOINT = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"
ENV_REGION = "AWS_DEFAULT_REGION"
ENV_REGION_ALT = "AWS_REGION"
ENV_KEY_DIR = "FHE_CLIENT_KEY_DIR"
ENV_CACHE_DIR = "FHE_CLIENT_CACHE_DIR"


@dataclass(frozen=True)
class ClientSettings:
    """Defaults for the CLI's options.

    Attributes:
        s3_endpoint_url: S3 endpoint override (local stack), from AWS_ENDPOINT_URL_S3.
        runtime_endpoint_url: sagemaker-runtime override, from AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
        region_name: From AWS_DEFAULT_REGION (or AWS_REGION).
        key_dir: From FHE_CLIENT_KEY_DIR (None: the user's cache dir).
        cache_dir: From FHE_CLIENT_CACHE_DIR (None: the user's cache dir).
    """

    s3_endpoint_url: str | None = None
    runtime_endpoint_url: str | None = None
    region_name: str | None = None
    key_dir: Path | None = None
    cache_dir: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClientSettings:
        """Read the settings from an environment mapping (usually ``os.environ``)."""

        def path(name: str) -> Path | None:
            return Path(environ[name]).expanduser() if environ.get(name) else None

        return cls(
            s3_endpoint_url=environ.get(ENV_S3_ENDPOINT) or None,
            runtime_endpoint_url=environ.get(ENV_RUNTIME_ENDPOINT) or None,
            region_name=environ.get(ENV_REGION) or environ.get(ENV_REGION_ALT) or None,
            key_dir=path(ENV_KEY_DIR),
            cache_dir=path(ENV_CACHE_DIR),
        )
