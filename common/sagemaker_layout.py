"""SageMaker's training job layout, described once: the ``/opt/ml`` folders and ``SM_*`` names.

Modelled on the training toolkit's ``sagemaker_training.environment.Environment``: a job's
folders live under one base (``/opt/ml`` in the container) and the toolkit tells the training
script where they are through ``SM_*`` environment variables. The local training job
(:mod:`local_mode.training_job`) lays a job out with :class:`JobLayout` and writes its
environment with :meth:`JobLayout.environment`; the training script reads it back with
:meth:`TrainingEnvironment.from_env`; the serving container's default model folder is
:attr:`JobLayout.model_dir` too. One definition, so the names cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.s3_location import S3Uri, parse_s3_prefix

BASE_DIR = Path("/opt/ml")
TRAINING_CHANNEL = "training"
HOST = "algo-1"
HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
FAILURE_FILE = "failure"
MODEL_TARBALL = "model.tar.gz"  # SM_MODEL_DIR, packed
OUTPUT_TARBALL = "output.tar.gz"  # SM_OUTPUT_DATA_DIR, packed

ENV_MODEL_DIR = "SM_MODEL_DIR"
ENV_CHANNELS = "SM_CHANNELS"
ENV_CHANNEL_PREFIX = "SM_CHANNEL_"
ENV_INPUT_DIR = "SM_INPUT_DIR"
ENV_INPUT_CONFIG_DIR = "SM_INPUT_CONFIG_DIR"
ENV_OUTPUT_DIR = "SM_OUTPUT_DIR"
ENV_OUTPUT_DATA_DIR = "SM_OUTPUT_DATA_DIR"
ENV_HPS = "SM_HPS"
ENV_CURRENT_HOST = "SM_CURRENT_HOST"
ENV_HOSTS = "SM_HOSTS"
ENV_NUM_CPUS = "SM_NUM_CPUS"


def job_outputs(output_path: str, job_name: str) -> tuple[S3Uri, S3Uri]:
    """Where a job's model.tar.gz and output.tar.gz land: ``<output_path>/<job>/output/``.

    Raises:
        S3LocationError: ``output_path`` is not an ``s3://bucket[/prefix]``.
    """
    folder = parse_s3_prefix(output_path, field="output_path")
    return (folder.join(job_name, "output", MODEL_TARBALL),
            folder.join(job_name, "output", OUTPUT_TARBALL))


def channel_env(channel: str) -> str:
    """``SM_CHANNEL_TRAINING`` for channel ``training``."""
    return f"{ENV_CHANNEL_PREFIX}{channel.upper()}"


@dataclass(frozen=True)
class JobLayout:
    """The folders of one training job under ``root`` (``/opt/ml`` on SageMaker)."""

    root: Path = BASE_DIR

    @property
    def input_dir(self) -> Path:
        """input (SM_INPUT_DIR)."""
        return self.root / "input"

    @property
    def config_dir(self) -> Path:
        """input/config (SM_INPUT_CONFIG_DIR): hyperparameters.json, inputdataconfig.json."""
        return self.input_dir / "config"

    def channel(self, name: str) -> Path:
        """input/data/<name> (SM_CHANNEL_<NAME>)."""
        return self.input_dir / "data" / name

    @property
    def channel_dir(self) -> Path:
        """input/data/training: the kit's one channel (SM_CHANNEL_TRAINING)."""
        return self.channel(TRAINING_CHANNEL)

    @property
    def model_dir(self) -> Path:
        """model (SM_MODEL_DIR): packed into model.tar.gz."""
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        """output (SM_OUTPUT_DIR)."""
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        """output/data (SM_OUTPUT_DATA_DIR): packed into output.tar.gz."""
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        """output/failure: SageMaker shows its text as the job's FailureReason."""
        return self.output_dir / FAILURE_FILE

    def create(self, channels: Sequence[str] = (TRAINING_CHANNEL,)) -> JobLayout:
        """Create every folder; returns self."""
        for folder in (self.config_dir, *map(self.channel, channels), self.model_dir,
                       self.output_data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def environment(self, hyperparameters: Mapping[str, str], *,
                    channels: Sequence[str] = (TRAINING_CHANNEL,)) -> dict[str, str]:
        """The ``SM_*`` variables the training toolkit sets for a one-host job here."""
        return {
            ENV_MODEL_DIR: str(self.model_dir),
            **{channel_env(channel): str(self.channel(channel)) for channel in channels},
            ENV_CHANNELS: json.dumps(list(channels)),
            ENV_INPUT_DIR: str(self.input_dir),
            ENV_INPUT_CONFIG_DIR: str(self.config_dir),
            ENV_OUTPUT_DIR: str(self.output_dir),
            ENV_OUTPUT_DATA_DIR: str(self.output_data_dir),
            ENV_HPS: json.dumps(dict(hyperparameters)),
            ENV_CURRENT_HOST: HOST,
            ENV_HOSTS: json.dumps([HOST]),
            ENV_NUM_CPUS: str(os.cpu_count() or 1),
        }


@dataclass(frozen=True)
class TrainingEnvironment:
    """The folders the toolkit named in the environment; None where it named none.

    Outside SageMaker nothing is required: an unset or empty variable is None, never a KeyError.
    """

    model_dir: Path | None = None
    channel_dirs: Mapping[str, Path] = field(default_factory=dict)
    output_dir: Path | None = None
    output_data_dir: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TrainingEnvironment:
        """Read the ``SM_*`` folders of ``environ``."""

        def path(name: str) -> Path | None:
            value = environ.get(name, "").strip()
            return Path(value) if value else None

        channels = {name[len(ENV_CHANNEL_PREFIX):].lower(): folder
                    for name in environ if name.startswith(ENV_CHANNEL_PREFIX)
                    if (folder := path(name)) is not None}
        return cls(model_dir=path(ENV_MODEL_DIR), channel_dirs=channels,
                   output_dir=path(ENV_OUTPUT_DIR), output_data_dir=path(ENV_OUTPUT_DATA_DIR))

    def channel(self, name: str = TRAINING_CHANNEL) -> Path | None:
        """The folder of channel ``name``, if the environment names one."""
        return self.channel_dirs.get(name)
