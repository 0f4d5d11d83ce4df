"""The two container images: build them from the checkout and run them as SageMaker does.

Used by the container tests (``tests/containers``) and by ``python -m bench --images``, which
records their sizes, build times and time to a healthy ``/ping``.

* :func:`docker_problem` says why Docker cannot be used here (None when it can);
* :func:`ensure_base_image` makes ``python:3.11-slim-bookworm`` available: present, pulled, or
  built from Debian packages by ``scripts/build-base-image.sh`` when no registry is reachable;
* :func:`build_image` builds ``Dockerfile.<kind>`` (layer cache on; both images share their
  first layers, torch included);
* :func:`create_job` writes SageMaker's ``/opt/ml`` job layout and :func:`run_training` runs
  ``docker run IMAGE train`` on it with each folder mounted where SageMaker mounts it;
* :func:`serving_container` runs ``docker run IMAGE serve`` on a model folder until ``/ping``
  answers 200, and removes the container afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from common.sagemaker_layout import (
    HOST,
    HYPERPARAMETERS_FILE,
    INPUT_DATA_CONFIG_FILE,
    TRAINING_CHANNEL,
    JobLayout,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "python:3.11-slim-bookworm"
BASE_IMAGE_SCRIPT = REPO_ROOT / "scripts" / "build-base-image.sh"
DOCKERFILES = {"inference": "Dockerfile.inference", "training": "Dockerfile.training"}
SAGEMAKER_HOST = HOST
PULL_TIMEOUT = 300.0
BASE_BUILD_TIMEOUT = 1200.0
BUILD_TIMEOUT = 2400.0
TRAIN_TIMEOUT = 900.0
HEALTHY_TIMEOUT = 300.0
LOG_TAIL_LINES = 25


class DockerError(RuntimeError):
    """Docker cannot be used, or a build or a container failed; the message says why."""


@dataclass(frozen=True)
class ImageBuild:
    """One ``docker build``: the image, how long it took, how big it is.

    Attributes:
        kind: ``inference`` or ``training``.
        tag: The image tag.
        seconds: Wall time of ``docker build``.
        size_bytes: ``docker image inspect`` size (all layers, the base included).
        no_cache: Built with ``--no-cache`` (every layer rebuilt; the base image was present).
    """

    kind: str
    tag: str
    seconds: float
    size_bytes: int
    no_cache: bool = False


def docker(*args: str, timeout: float = 120.0, check: bool = True,
           log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; output is captured (or appended to ``log``).

    Raises:
        DockerError: non-zero exit with ``check`` (the message carries the output's tail), or
            the command outlived ``timeout``.
    """
    command = ["docker", *args]
    try:
        if log is None:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    check=False)
        else:
            with open(log, "a") as out:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True,
                                        timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"`docker {' '.join(args[:3])} ...` did not finish in {timeout:.0f} s"
                          + (f"; see {log}" if log else "")) from exc
    if check and result.returncode != 0:
        output = tail(log) if log else (result.stderr or result.stdout)
        raise DockerError(f"`docker {' '.join(args[:3])} ...` exited with {result.returncode}"
                          + (f"; see {log}" if log else "") + f":\n{output.strip()}")
    return result


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def docker_problem() -> str | None:
    """Why containers cannot be built and run here, saying the fix; None when they can."""
    if shutil.which("docker") is None:
        return ("the docker CLI is not installed (Debian: apt-get install docker.io; CI's .ci/run "
                "installs it)")
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except DockerError as exc:
        first = str(exc).splitlines()[-1][:300]
        return (f"the Docker daemon is not reachable ({first}): start it (as root: dockerd "
                "--iptables=false --bridge=none &) or give this user access to its socket")
    return None


def image_exists(tag: str) -> bool:
    """True when ``tag`` is in the local image store."""
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


def image_size(tag: str) -> int:
    """Size of ``tag`` in bytes, all layers included."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag, timeout=30).stdout)


def ensure_base_image(*, log: Path) -> str:
    """Make :data:`BASE_IMAGE` available; return how: ``present``, ``pulled`` or ``built``.

    Raises:
        DockerError: it is not present, cannot be pulled, and cannot be built here.
    """
    if image_exists(BASE_IMAGE):
        return "present"
    pulled = docker("pull", BASE_IMAGE, check=False, timeout=PULL_TIMEOUT)
    if pulled.returncode == 0:
        return "pulled"
    reason = (pulled.stderr or pulled.stdout).strip().splitlines()[-1:] or ["no output"]
    missing = [what for what, ok in (("root", os.geteuid() == 0),
                                     ("debootstrap", shutil.which("debootstrap") is not None))
               if not ok]
    if missing:
        raise DockerError(
            f"{BASE_IMAGE} is not present and cannot be pulled ({reason[0][:200]}); building a "
            f"stand-in needs {' and '.join(missing)}: run `sudo {BASE_IMAGE_SCRIPT}` once "
            "(apt-get install debootstrap)")
    try:
        with open(log, "a") as out:
            result = subprocess.run([str(BASE_IMAGE_SCRIPT), BASE_IMAGE], stdout=out,
                                    stderr=subprocess.STDOUT, timeout=BASE_BUILD_TIMEOUT,
                                    check=False)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{BASE_IMAGE_SCRIPT} did not finish in {BASE_BUILD_TIMEOUT:.0f} s; "
                          f"see {log}") from exc
    if result.returncode != 0:
        raise DockerError(f"{BASE_IMAGE_SCRIPT} exited with {result.returncode}; see {log}:\n"
                          f"{tail(log)}")
    return "built"


def build_image(kind: str, *, tag: str, log: Path, no_cache: bool = False,
                target: str | None = None) -> ImageBuild:
    """Build ``Dockerfile.<kind>`` from the checkout as ``tag`` (host network, layer cache on).

    ``target`` builds that stage (``slim`` of Dockerfile.inference) instead of the last one.

    Raises:
        DockerError: unknown kind, or the build failed (the message has the log's tail).
    """
    if kind not in DOCKERFILES:
        raise DockerError(f"unknown image {kind!r}: choose one of {', '.join(DOCKERFILES)}")
    args = ["build", "--network=host", "-f", str(REPO_ROOT / DOCKERFILES[kind]), "-t", tag,
            *(["--target", target] if target else [])]
    started = time.monotonic()
    docker(*args, *(["--no-cache"] if no_cache else []), str(REPO_ROOT), timeout=BUILD_TIMEOUT,
           log=log)
    seconds = time.monotonic() - started
    return ImageBuild(kind, tag, seconds, image_size(tag), no_cache)


# -- training: SageMaker's job layout ------------------------------------------------------


def create_job(root: Path, hyperparameters: Mapping[str, Any], *,
               instance_type: str = "ml.c5.2xlarge", content_type: str = "text/csv") -> JobLayout:
    """A training job's ``/opt/ml`` on the host, with SageMaker's three config files.

    Hyperparameter values are JSON-encoded strings, as the SageMaker SDK sends them and the
    platform writes them (``{"model": "\\"LogisticRegression\\"", "n_bits": "8"}``).
    """
    layout = JobLayout(root).create()
    files = {
        HYPERPARAMETERS_FILE: {name: json.dumps(value) for name, value in hyperparameters.items()},
        "resourceconfig.json": {
            "current_host": SAGEMAKER_HOST, "hosts": [SAGEMAKER_HOST],
            "network_interface_name": "eth0", "current_group_name": "homogeneousCluster",
            "current_instance_type": instance_type,
            "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                 "instance_type": instance_type, "hosts": [SAGEMAKER_HOST]}],
        },
        INPUT_DATA_CONFIG_FILE: {TRAINING_CHANNEL: {"TrainingInputMode": "File",
                                                     "S3DistributionType": "FullyReplicated",
                                                     "RecordWrapperType": "None",
                                                     "ContentType": content_type}},
    }
    for name, doc in files.items():
        (layout.config_dir / name).write_text(json.dumps(doc))
    return layout


@dataclass(frozen=True)
class TrainingRun:
    """How ``docker run IMAGE train`` ended."""

    returncode: int
    seconds: float
    log: Path


def run_training(image: str, job: JobLayout, *, job_name: str, log: Path,
                 timeout: float = TRAIN_TIMEOUT) -> TrainingRun:
    """``docker run IMAGE train`` on ``job``, as SageMaker runs a training job.

    ``input/``, ``model/`` and ``output/`` are mounted where SageMaker mounts them (not all of
    ``/opt/ml``, which would hide the image's ``/opt/ml/code``), ``algo-1`` resolves (SageMaker
    provides the name; without it the toolkit retries DNS for minutes), and the container has
    no network at all: a File-mode job needs none.

    Raises:
        DockerError: the container outlived ``timeout`` (it is removed).
    """
    name = f"fhe-train-{uuid.uuid4().hex[:10]}"
    container = JobLayout()  # /opt/ml
    args = ["run", "--rm", "--name", name, "--network", "none",
            "--add-host", f"{SAGEMAKER_HOST}:127.0.0.1", "-e", f"TRAINING_JOB_NAME={job_name}",
            "-v", f"{job.input_dir}:{container.input_dir}",
            "-v", f"{job.model_dir}:{container.model_dir}",
            "-v", f"{job.output_dir}:{container.output_dir}", image, "train"]
    started = time.monotonic()
    try:
        result = docker(*args, timeout=timeout, check=False, log=log)
    finally:
        docker("rm", "-f", name, check=False, timeout=60)
    return TrainingRun(result.returncode, time.monotonic() - started, log)


# -- serving -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingContainer:
    """A running ``docker run IMAGE serve``.

    Attributes:
        name: Container name (for ``docker exec``, ``docker kill``).
        url: ``http://127.0.0.1:<port>``.
        healthy_seconds: From ``docker run`` to the first ``/ping`` 200.
        log: Where the container's output goes when it is removed.
    """

    name: str
    url: str
    healthy_seconds: float
    log: Path

    def running(self) -> bool:
        """True while the container runs."""
        state = docker("inspect", "--format", "{{.State.Running}}", self.name, check=False,
                       timeout=30)
        return state.stdout.strip() == "true"


@contextmanager
def serving_container(image: str, *, model_dir: Path, port: int, env: Mapping[str, str],
                      log: Path, extra_args: Sequence[str] = (),
                      timeout: float = HEALTHY_TIMEOUT) -> Iterator[ServingContainer]:
    """``docker run IMAGE serve`` with ``model_dir`` read-only at /opt/ml/model.

    The container shares the host's network (its S3 may be a server on loopback) and listens on
    ``127.0.0.1:port``. Yields once ``/ping`` answers 200; the container is removed afterwards
    and its output saved to ``log``.

    Raises:
        DockerError: the container exited or was not healthy within ``timeout`` seconds.
    """
    name = f"fhe-serve-{uuid.uuid4().hex[:10]}"
    settings = {"SAGEMAKER_BIND_TO_PORT": str(port), "FHE_BIND_HOST": "127.0.0.1", **env}
    args = ["run", "-d", "--name", name, "--network", "host",
            "-v", f"{model_dir}:/opt/ml/model:ro", *extra_args]
    for key, value in settings.items():
        args += ["-e", f"{key}={value}"]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    docker(*args, image, "serve", timeout=120)
    try:
        healthy = _wait_for_ping(name, url, started=started, timeout=timeout)
        yield ServingContainer(name, url, healthy, log)
    finally:
        with open(log, "w") as out:
            subprocess.run(["docker", "logs", name], stdout=out, stderr=subprocess.STDOUT,
                           timeout=60, check=False)
        docker("rm", "-f", name, check=False, timeout=60)


def _wait_for_ping(name: str, url: str, *, started: float, timeout: float) -> float:
    """Poll ``url/ping`` until 200; return seconds since ``started``."""
    while time.monotonic() - started < timeout:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        state = docker("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name,
                       check=False, timeout=30).stdout.split()
        if state[:1] != ["true"]:
            logs = docker("logs", "--tail", str(LOG_TAIL_LINES), name, check=False, timeout=30)
            raise DockerError(f"the serving container exited (code {state[1:] or '?'}) before "
                              f"/ping answered 200:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.1)
    logs = docker("logs", "--tail", str(LOG_TAIL_LINES), name, check=False, timeout=30)
    raise DockerError(f"{url}/ping did not answer 200 within {timeout:.0f} s:\n"
                      f"{logs.stdout}{logs.stderr}")


# -- python -m bench --images --------------------------------------------------------------

BENCH_TAGS = {"inference": "concrete-inference:bench", "training": "concrete-training:bench"}
BENCH_SLIM_TAG = "concrete-inference:bench-slim"
BENCH_CASE = "logreg"
BENCH_BUCKET = "fhe-bench-images"


def layer_sizes(tag: str) -> list[tuple[int, str]]:
    """``(bytes, instruction)`` of every layer of ``tag``, newest first."""
    out = docker("history", "--no-trunc", "-H=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                 tag, timeout=60).stdout
    return [(int(size), created) for size, _, created in
            (line.partition("\t") for line in out.splitlines())]


def torch_layer_bytes(tag: str) -> int:
    """Size of the layer that installs torch and the CUDA libraries it links against."""
    return sum(size for size, created in layer_sizes(tag)
               if "pip install" in created and created.split("pip install", 1)[1].split("&&")[0]
               .split()[-1:] == ["torch"])


def measure(work_dir: Path, *, reps: int = 3) -> dict[str, Any]:
    """Build the images (no layer cache, then from cache), train, serve; return the numbers.

    ``inference`` and ``training`` are the default targets, ``slim`` Dockerfile.inference's
    slim target; ``serving`` compares the two inference targets on the trained model
    (:func:`compare_serving`).

    Raises:
        DockerError: Docker is unusable, or a build, the training job or the server failed.
    """
    from bench.cases import CASES, load_split
    from bench.machine import describe
    from local_mode.stack import training_csv

    problem = docker_problem()
    if problem:
        raise DockerError(problem)
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"base_image": BASE_IMAGE,
                           "base_image_source": ensure_base_image(log=logs / "base.log"),
                           "machine": describe()}
    builds = {kind: (kind, tag, None) for kind, tag in BENCH_TAGS.items()}
    builds["slim"] = ("inference", BENCH_SLIM_TAG, SLIM_TARGET)
    for name, (kind, tag, target) in builds.items():
        log = logs / f"build-{name}.log"
        cold = build_image(kind, tag=tag, log=log, no_cache=True, target=target)
        warm = build_image(kind, tag=tag, log=log, target=target)
        doc[name] = {"tag": tag, "size_bytes": warm.size_bytes,
                     "torch_layer_bytes": torch_layer_bytes(tag),
                     "build_seconds_no_cache": round(cold.seconds, 1),
                     "build_seconds_cached": round(warm.seconds, 1)}
    case = CASES[BENCH_CASE]
    split = load_split(case)
    job = create_job(work_dir / "job", case.hyperparameters)
    (job.channel_dir / "train.csv").write_bytes(training_csv(split.x_train, split.y_train))
    run = run_training(BENCH_TAGS["training"], job, job_name="fhe-bench-images",
                       log=logs / "train.log")
    if run.returncode != 0:
        raise DockerError(f"the training container exited with {run.returncode}; see {run.log}")
    doc["training"]["job_seconds"] = round(run.seconds, 1)
    job.model_dir.chmod(0o755)
    doc["serving"] = serve_both(job.model_dir, split.x_held[:1], work_dir=work_dir, reps=reps)
    doc["inference"]["healthy_ping_seconds"] = doc["serving"]["default"]["healthy_ping_seconds"]
    doc["model"] = case.label
    return doc


def serve_both(model_dir: Path, rows: Any, *, work_dir: Path, reps: int = 3,
               images: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`compare_serving` of the default and slim inference images on ``model_dir``, with
    an embedded S3 holding evaluation keys and one encrypted row (``rows[:1]``, raw features:
    the model's scaler is applied)."""
    from concrete.ml.deployment import FHEModelClient

    from common.artifact import read_manifest
    from common.contract import build_request, sha256_hex
    from local_mode.s3_server import LocalS3Server, local_session

    images = images or {"default": BENCH_TAGS["inference"], "slim": BENCH_SLIM_TAG}
    client = FHEModelClient(str(model_dir), key_dir=str(work_dir / "client-keys"))
    client.generate_private_and_evaluation_keys(force=True)
    keys = client.get_serialized_evaluation_keys()
    scaler = read_manifest(model_dir).scaler
    query = client.quantize_encrypt_serialize(scaler.transform(rows[:1]) if scaler else rows[:1])
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with LocalS3Server(log_path=logs / "moto-serving.log") as s3:
        s3_client = local_session().client("s3", endpoint_url=s3.endpoint_url)
        s3_client.create_bucket(Bucket=BENCH_BUCKET)
        for key, body in (("fhe/keys.ekl", keys), ("fhe/query.bin", query)):
            s3_client.put_object(Bucket=BENCH_BUCKET, Key=key, Body=body)
        request = build_request(evaluation_keys_uri=f"s3://{BENCH_BUCKET}/fhe/keys.ekl",
                                evaluation_keys_sha256=sha256_hex(keys),
                                encrypted_query_uri=f"s3://{BENCH_BUCKET}/fhe/query.bin")
        env = {**s3.env(), "FHE_ALLOWED_S3_PREFIXES": f"s3://{BENCH_BUCKET}/fhe"}
        return compare_serving(images, model_dir=model_dir, request=request, env=env, logs=logs,
                               reps=reps)


# -- the two inference targets side by side -------------------------------------------------

SLIM_TARGET = "slim"
# A worker's imports: the serving app and the package its runtime loads the circuit with.
WORKER_IMPORTS = {"concrete-ml": "inference.predictor, concrete.ml.deployment",
                  "compiler": "inference.predictor, concrete.compiler"}
_WORKER_PROBE = (
    "import json, os, subprocess, sys, time\n"
    "runtime = os.environ.get('FHE_RUNTIME', 'concrete-ml')\n"
    "started = time.perf_counter()\n"
    "subprocess.run([sys.executable, '-c', 'import ' + sys.argv[1]], check=True)\n"
    "seconds = time.perf_counter() - started\n"
    "rss = {}\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "        status = open(f'/proc/{pid}/status').read().splitlines()\n"
    "        ppid = next(x for x in status if x.startswith('PPid:')).split()[1]\n"
    "        parent = open(f'/proc/{ppid}/cmdline', 'rb').read()\n"
    "    except OSError:\n"
    "        continue\n"
    "    if b'gunicorn' in cmd and b'gunicorn' in parent:  # a worker: gunicorn's child\n"
    "        rss[pid] = int(next(x for x in status if x.startswith('VmRSS:')).split()[1]) * 1024\n"
    "print(json.dumps({'runtime': runtime, 'import_seconds': seconds, 'worker_rss': rss}))\n"
)


def worker_probe(container: str, runtime: str) -> dict[str, Any]:
    """Inside a serving container: a cold worker's import time, every worker's RSS."""
    out = docker("exec", container, "python", "-c", _WORKER_PROBE, WORKER_IMPORTS[runtime],
                 timeout=300).stdout
    return json.loads(out.splitlines()[-1])


def compare_serving(images: Mapping[str, str], *, model_dir: Path, request: bytes,
                    env: Mapping[str, str], logs: Path, reps: int = 3,
                    requests_per_run: int = 5) -> dict[str, Any]:
    """Serve ``model_dir`` with each image (name -> tag) ``reps`` times; the numbers per image.

    Each run: ``docker run IMAGE serve`` -> healthy ``/ping``; a cold worker's import time and
    the worker's RSS after load (:func:`worker_probe`); then ``requests_per_run`` POSTs of
    ``request`` (an /invocations body whose objects ``env``'s S3 holds), timed end to end.
    """
    from local_mode.processes import free_port

    doc: dict[str, Any] = {}
    for name, tag in images.items():
        runtime = docker("image", "inspect", "--format", "{{range .Config.Env}}{{println .}}"
                         "{{end}}", tag, timeout=60).stdout
        runtime = "compiler" if "FHE_RUNTIME=compiler" in runtime else "concrete-ml"
        healthy, imports, rss, latency = [], [], [], []
        for rep in range(reps):
            with serving_container(tag, model_dir=model_dir, port=free_port(), env=env,
                                   log=logs / f"compare-{name}-{rep}.log") as served:
                healthy.append(served.healthy_seconds)
                probe = worker_probe(served.name, runtime)
                imports.append(probe["import_seconds"])
                for _ in range(requests_per_run):
                    started = time.monotonic()
                    answer = requests.post(f"{served.url}/invocations", data=request,
                                           headers={"Content-Type": "application/json"},
                                           timeout=600)
                    latency.append(time.monotonic() - started)
                    if answer.status_code != 200:
                        raise DockerError(f"{tag}: /invocations answered {answer.status_code}:"
                                          f" {answer.text[:300]}")
                rss.extend(worker_probe(served.name, runtime)["worker_rss"].values())
        doc[name] = {"tag": tag, "runtime": runtime, "size_bytes": image_size(tag),
                     "healthy_ping_seconds": _summary(healthy),
                     "worker_import_seconds": _summary(imports),
                     "worker_rss_bytes": _summary(rss),
                     "request_seconds": _summary(latency)}
    return doc


def _summary(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"runs": [round(v, 4) for v in values], "median": round(ordered[len(ordered) // 2], 4)}
