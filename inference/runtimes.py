"""The two ways a worker runs a circuit, behind one interface (:class:`CircuitRuntime`).

* ``concrete-ml`` (:class:`ConcreteMlRuntime`): concrete-ml's ``FHEModelServer``, the AWS sample's
  way. Importing it imports torch and scikit-learn (about 9 s cold).
* ``compiler`` (:class:`CompilerRuntime`): concrete-python's compiler and runtime alone
  (``concrete.compiler``, 0.2 s, no torch). ``FHEModelServer`` loads server.zip by compiling its
  ``circuit.mlir`` with the options saved in ``configuration.json``; this runtime does the same
  compile with the same compiler and options, once per container: the first worker compiles into
  a cache folder named by server.zip's sha256, the other workers (and any worker gunicorn
  restarts) load the compiled library from it. Before serving, the compiled circuit's
  ``ProgramInfo`` must equal the one server.zip was saved with (``client.specs.json``), so a
  compile that chose other parameters than the client's keys were made for never serves.

Both take the bytes the wire contract carries (serialized evaluation keys, one serialized
ciphertext) and return the serialized result: the same bytes for the same inputs (tested).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from common.artifact import SERVER_ZIP

logger = logging.getLogger(__name__)

RUNTIME_CONCRETE_ML = "concrete-ml"
RUNTIME_COMPILER = "compiler"
RUNTIMES = (RUNTIME_CONCRETE_ML, RUNTIME_COMPILER)
CONCRETE_PYTHON = "concrete-python"
# concrete-python 2.10's defaults (concrete.fhe.compilation.configuration), used when
# configuration.json sets neither p_error nor global_p_error.
DEFAULT_GLOBAL_P_ERROR = 1 / 100_000
# server.zip members (concrete.fhe.Server.save(via_mlir=True)).
MLIR_NAME = "circuit.mlir"
CONFIGURATION_NAME = "configuration.json"
SIMULATED_NAME = "is_simulated"
COMPOSITION_NAME = "composition_rules.json"
CLIENT_SPECS_NAME = "client.specs.json"
VERSIONS_NAME = "versions.json"
_OPTIMIZER_STRATEGIES = {"v0": "V0", "mono": "DAG_MONO", "multi": "DAG_MULTI"}
_MULTI_PARAMETER_STRATEGIES = {"precision": "PRECISION",
                               "precision_and_norm2": "PRECISION_AND_NORM2"}


class ModelLoadError(RuntimeError):
    """The model directory cannot be served (missing server.zip, version mismatch, bad manifest)."""


class CircuitRuntime(Protocol):
    """What :class:`inference.model.FheModel` needs from a loaded circuit."""

    name: str

    def program_info_json(self) -> str:
        """The circuit's serialized ``ProgramInfo`` (its keyset, inputs and outputs)."""

    def deserialize_keys(self, data: bytes) -> Any:
        """Serialized evaluation keys -> the runtime's key object (RuntimeError if unreadable)."""

    def run(self, ciphertext: bytes, keys: Any) -> bytes:
        """One serialized ciphertext -> the serialized result (RuntimeError if it does not fit)."""


def load_runtime(name: str, model_dir: Path, *, cache_dir: Path | None = None) -> CircuitRuntime:
    """Load ``model_dir/server.zip`` with the runtime called ``name`` (one of :data:`RUNTIMES`).

    Raises:
        ModelLoadError: unknown runtime, or the circuit cannot be loaded by it.
    """
    if name == RUNTIME_CONCRETE_ML:
        return ConcreteMlRuntime.load(model_dir)
    if name == RUNTIME_COMPILER:
        return CompilerRuntime.load(model_dir, cache_dir=cache_dir)
    raise ModelLoadError(f"unknown FHE runtime {name!r}: choose one of {', '.join(RUNTIMES)}")


@dataclass(frozen=True)
class ConcreteMlRuntime:
    """concrete-ml's ``FHEModelServer`` (it recompiles ``circuit.mlir`` in every worker)."""

    server: Any
    name: str = RUNTIME_CONCRETE_ML

    @classmethod
    def load(cls, model_dir: Path) -> ConcreteMlRuntime:
        """Load ``model_dir/server.zip`` with ``FHEModelServer``.

        Raises:
            ModelLoadError: concrete-ml is not installed, or it cannot load the circuit.
        """
        try:
            from concrete.ml.deployment import FHEModelServer
        except ImportError as exc:
            raise ModelLoadError(
                f"the {RUNTIME_CONCRETE_ML} runtime needs concrete-ml, which this image does not"
                f" have ({exc}): set FHE_RUNTIME={RUNTIME_COMPILER} or use the default image"
            ) from exc
        try:
            return cls(FHEModelServer(str(model_dir)))
        except Exception as exc:
            raise ModelLoadError(f"cannot load {model_dir / SERVER_ZIP}: {exc}") from exc

    def program_info_json(self) -> str:
        return self.server.server.client_specs.program_info.serialize()

    def deserialize_keys(self, data: bytes) -> Any:
        from concrete import fhe

        return fhe.EvaluationKeys.deserialize(data)

    def run(self, ciphertext: bytes, keys: Any) -> bytes:
        return self.server.run(ciphertext, keys)


@dataclass(frozen=True)
class SavedServer:
    """What ``server.zip`` holds, read without concrete's frontend (no jsonpickle, no torch).

    Attributes:
        sha256: Of the server.zip bytes (names the compiled library in the cache).
        mlir: ``circuit.mlir``.
        configuration: ``configuration.json`` (a ``concrete.fhe.Configuration``'s fields).
        composition_rules: ``[[[from_func, from_pos], [to_func, to_pos]], ...]``.
        program_info: The ``ProgramInfo`` the circuit was saved with (``client.specs.json``
            without its ``tfhers_specs``: the program info clients make keys for), or None in a
            server.zip without one.
    """

    sha256: str
    mlir: str
    configuration: dict[str, Any]
    composition_rules: list[Any]
    program_info: dict[str, Any] | None

    @classmethod
    def read(cls, path: Path) -> SavedServer:
        """Read and check ``path`` (a server.zip).

        Raises:
            ModelLoadError: not a server.zip this runtime can compile; the message says why.
        """
        data = path.read_bytes()
        try:
            with zipfile.ZipFile(path) as archive:
                members = {name: archive.read(name) for name in archive.namelist()
                           if "/" not in name}
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(f"{path} is not a zip archive ({exc}): deploy the server.zip"
                                 " FHEModelDev.save wrote") from exc
        if MLIR_NAME not in members or CONFIGURATION_NAME not in members:
            raise ModelLoadError(
                f"{path} holds no {MLIR_NAME} and {CONFIGURATION_NAME}: the {RUNTIME_COMPILER}"
                " runtime compiles the MLIR concrete-ml's FHEModelDev.save writes; save the"
                f" model with it, or serve this file with FHE_RUNTIME={RUNTIME_CONCRETE_ML}"
            )
        _check_versions(path, members.get(VERSIONS_NAME))
        if members.get(SIMULATED_NAME, b"0").strip() == b"1":
            raise ModelLoadError(f"{path} holds a simulated circuit, which cannot run on"
                                 " ciphertexts: save the model compiled for FHE execution")
        specs = json.loads(members.get(CLIENT_SPECS_NAME, b"null")) or {}
        tfhers_specs = specs.pop("tfhers_specs", None) or {}
        _refuse_tfhers(path, tfhers_specs)
        return cls(
            sha256=hashlib.sha256(data).hexdigest(),
            mlir=members[MLIR_NAME].decode(),
            configuration=decode_configuration(members[CONFIGURATION_NAME]),
            composition_rules=json.loads(members.get(COMPOSITION_NAME, b"null")) or [],
            program_info=specs or None,
        )


def _check_versions(path: Path, versions_json: bytes | None) -> None:
    """concrete-python must be the version the circuit was saved with (as FHEModelServer checks)."""
    if versions_json is None:
        return
    saved = json.loads(versions_json).get(CONCRETE_PYTHON)
    installed = metadata.version(CONCRETE_PYTHON)
    if saved is not None and saved != installed:
        raise ModelLoadError(
            f"{path} was saved with {CONCRETE_PYTHON} {saved}, this image has {installed}:"
            f" train with the image that matches this one ({CONCRETE_PYTHON} {installed})"
        )


def _refuse_tfhers(path: Path, tfhers_specs: dict[str, Any]) -> None:
    """TFHE-rs interoperable circuits need concrete-ml's bridge (the default image)."""
    for types in (tfhers_specs.get("input_types_per_func") or {},
                  tfhers_specs.get("output_types_per_func") or {}):
        if any(t is not None for per_func in types.values() for t in per_func or []):
            raise ModelLoadError(f"{path} is a TFHE-rs interoperable circuit: serve it with"
                                 f" FHE_RUNTIME={RUNTIME_CONCRETE_ML} (the default image)")


def decode_configuration(data: bytes) -> dict[str, Any]:
    """``configuration.json`` (jsonpickle) -> plain values, without importing concrete.fhe.

    jsonpickle writes concrete's enums in one of two forms, depending on the Python that saved
    them: by value, ``{"py/reduce": [{"py/type": E}, {"py/tuple": [value]}]}`` (3.11.7 here), or
    by member name, ``{"py/reduce": [{"py/function": "builtins.getattr"}, {"py/tuple": [{"py/type":
    E}, "NAME"]}]}`` (the images' Debian 3.11.2). Both become the enum's value (``"multi"``,
    ``128``). Other objects keep their jsonpickle form (only options this runtime refuses, or
    does not read, hold one).

    Raises:
        ModelLoadError: not JSON, or an enum member this runtime does not know.
    """
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ModelLoadError(f"{CONFIGURATION_NAME} is not JSON ({exc})") from exc
    return {key: _plain(key, value) for key, value in raw.items()}


def _plain(key: str, value: Any) -> Any:
    """One configuration value, with a jsonpickled enum replaced by its value."""
    if not (isinstance(value, dict) and "py/reduce" in value):
        return value
    function, args = value["py/reduce"][0], value["py/reduce"][1].get("py/tuple", [])
    if function.get("py/type") and len(args) == 1:  # E(value)
        return args[0]
    if function.get("py/function") == "builtins.getattr" and len(args) == 2:  # getattr(E, NAME)
        enum = str(args[0].get("py/type", "")).rsplit(".", 1)[-1]
        members = _ENUM_VALUES.get(enum)
        if members is not None:
            if args[1] not in members:
                raise ModelLoadError(f"{CONFIGURATION_NAME}: {key} is {enum}.{args[1]}, which"
                                     f" the {RUNTIME_COMPILER} runtime does not know: serve it"
                                     f" with FHE_RUNTIME={RUNTIME_CONCRETE_ML}")
            return members[args[1]]
    return value


# concrete-python 2.10's enums that compilation_options reads: member name -> value.
_ENUM_VALUES: dict[str, dict[str, Any]] = {
    "ParameterSelectionStrategy": {"V0": "v0", "MONO": "mono", "MULTI": "multi"},
    "MultiParameterStrategy": {"PRECISION": "precision",
                               "PRECISION_AND_NORM2": "precision_and_norm2"},
    "SecurityLevel": {"SECURITY_128_BITS": 128, "SECURITY_132_BITS": 132},
}


def compilation_options(configuration: dict[str, Any], composition_rules: list[Any]) -> Any:
    """concrete's ``CompilationOptions`` for a saved configuration, as ``Server.create`` sets them.

    Raises:
        ModelLoadError: the configuration asks for what this runtime does not do (GPU, keyset or
            range restrictions, dataflow parallelism).
    """
    from concrete.compiler import (
        Backend,
        CompilationOptions,
        OptimizerMultiParameterStrategy,
        OptimizerStrategy,
    )

    conf = configuration
    unsupported = [key for key in ("use_gpu", "keyset_restriction", "range_restriction",
                                   "dataflow_parallelize", "auto_parallelize") if conf.get(key)]
    if unsupported:
        raise ModelLoadError(
            f"the circuit's configuration sets {', '.join(unsupported)}, which the"
            f" {RUNTIME_COMPILER} runtime does not support: serve it with"
            f" FHE_RUNTIME={RUNTIME_CONCRETE_ML} (the default image)"
        )
    options = CompilationOptions(Backend.CPU)
    options.simulation(False)
    options.set_loop_parallelize(conf.get("loop_parallelize", True))
    options.set_dataflow_parallelize(False)
    options.set_auto_parallelize(False)
    options.set_compress_evaluation_keys(conf.get("compress_evaluation_keys", False))
    options.set_compress_input_ciphertexts(conf.get("compress_input_ciphertexts", False))
    options.set_enable_overflow_detection_in_simulation(
        conf.get("detect_overflow_in_simulation", False))
    options.set_composable(conf.get("composable", False))
    for (from_func, from_pos), (to_func, to_pos) in composition_rules:
        options.add_composition(from_func, from_pos, to_func, to_pos)
    global_p_error, p_error = conf.get("global_p_error"), conf.get("p_error")
    if global_p_error is None and p_error is None:
        global_p_error = DEFAULT_GLOBAL_P_ERROR
    options.set_global_p_error(1.0 if global_p_error is None else global_p_error)
    options.set_p_error(1.0 if p_error is None else p_error)
    options.set_display_optimizer_choice(False)
    strategy = conf.get("parameter_selection_strategy", "multi")
    options.set_optimizer_strategy(getattr(OptimizerStrategy, _OPTIMIZER_STRATEGIES[strategy]))
    multi = conf.get("multi_parameter_strategy", "precision")
    options.set_optimizer_multi_parameter_strategy(
        getattr(OptimizerMultiParameterStrategy, _MULTI_PARAMETER_STRATEGIES[multi]))
    options.set_enable_tlu_fusing(conf.get("enable_tlu_fusing", True))
    options.set_print_tlu_fusing(False)
    options.set_security_level(int(conf.get("security_level", 128)))
    return options


@dataclass(frozen=True)
class CompilerRuntime:
    """concrete-python's compiler and runtime only: no torch, no concrete-ml, no scikit-learn.

    Attributes:
        library_dir: The compiled library (sharedlib.so, program info) this worker serves.
        circuit: The ``ServerCircuit`` of the program's one function.
        compiled: True if this worker compiled the circuit, False if it loaded the cache.
    """

    library_dir: Path
    circuit: Any
    info_json: str
    compiled: bool
    name: str = RUNTIME_COMPILER

    @classmethod
    def load(cls, model_dir: Path, *, cache_dir: Path | None = None) -> CompilerRuntime:
        """Compile ``model_dir/server.zip`` into ``cache_dir`` (or load it from there).

        Without ``cache_dir`` the circuit is compiled into a folder of its own, once per call.

        Raises:
            ModelLoadError: the circuit cannot be compiled or loaded, or compiles to other
                parameters than it was saved with.
        """
        saved = SavedServer.read(Path(model_dir) / SERVER_ZIP)
        if cache_dir is None:
            cache_dir = Path(tempfile.mkdtemp(prefix="fhe-circuit-"))
        try:
            library_dir, compiled = _cached_library(saved, Path(cache_dir))
            return cls._open(library_dir, saved, compiled)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot compile {Path(model_dir) / SERVER_ZIP}: {exc}") from exc

    @classmethod
    def _open(cls, library_dir: Path, saved: SavedServer, compiled: bool) -> CompilerRuntime:
        from concrete.compiler import Library, ServerProgram

        library = Library(str(library_dir))
        info_json = library.get_program_info().serialize()
        info = json.loads(info_json)
        if saved.program_info is not None and info != saved.program_info:
            raise ModelLoadError(
                "the circuit compiled here has other parameters than the one server.zip was"
                " saved with (client.specs.json): its clients' keys would not fit; serve it with"
                f" FHE_RUNTIME={RUNTIME_CONCRETE_ML} and report the concrete-python version"
            )
        circuits = info["circuits"]
        if len(circuits) != 1 or len(circuits[0]["inputs"]) != 1 \
                or len(circuits[0]["outputs"]) != 1:
            raise ModelLoadError("the circuit must have one function with one input and one"
                                 " output (concrete-ml's models have): serve it with"
                                 f" FHE_RUNTIME={RUNTIME_CONCRETE_ML}")
        program = ServerProgram(library, False)
        return cls(library_dir, program.get_server_circuit(circuits[0]["name"]), info_json,
                   compiled)

    def program_info_json(self) -> str:
        return self.info_json

    def deserialize_keys(self, data: bytes) -> Any:
        from concrete.compiler import ServerKeyset

        return ServerKeyset.deserialize(data)

    def run(self, ciphertext: bytes, keys: Any) -> bytes:
        from concrete.compiler import TransportValue

        (result,) = self.circuit.call([TransportValue.deserialize(ciphertext)], keys)
        return result.serialize()


def compile_library(saved: SavedServer, output_dir: Path) -> None:
    """Compile ``saved``'s MLIR into ``output_dir`` (sharedlib.so and its program info)."""
    from concrete.compiler import Compiler, lookup_runtime_lib

    options = compilation_options(saved.configuration, saved.composition_rules)
    compiler = Compiler(str(output_dir), lookup_runtime_lib(), generate_shared_lib=True,
                        generate_static_lib=False, generate_program_info=True,
                        generate_compilation_feedback=False)
    compiler.compile(saved.mlir, options)


def _cached_library(saved: SavedServer, cache_dir: Path) -> tuple[Path, bool]:
    """The compiled library of ``saved`` in ``cache_dir``: compiled by the first worker (under a
    file lock, into a temporary folder renamed into place), found there by the others."""
    key = f"{saved.sha256}-{CONCRETE_PYTHON}-{metadata.version(CONCRETE_PYTHON)}"
    final = cache_dir / key
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private(cache_dir)
    if (final / "sharedlib.so").is_file():
        return final, False
    with _locked(cache_dir / f"{key}.lock"):
        if (final / "sharedlib.so").is_file():
            return final, False
        work = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache_dir))
        try:
            compile_library(saved, work)
            if final.exists():  # a leftover without its library: replace it
                shutil.rmtree(final)
            os.replace(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("compiled the circuit into %s", final)
    return final, True


def _check_private(folder: Path) -> None:
    """The worker loads (runs) the shared library it finds in the cache: only this user may
    have written there.

    Raises:
        ModelLoadError: ``folder`` belongs to another user or others may write in it.
    """
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ModelLoadError(
            f"the circuit cache {folder} belongs to uid {info.st_uid} with mode"
            f" {info.st_mode & 0o777:o}: the server runs the compiled code it finds there, so"
            " it must belong to this user and be writable by no one else; set"
            " FHE_CIRCUIT_CACHE_DIR to such a folder (or one that does not exist yet)"
        )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released when the process dies, too)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
