"""The compiler runtime (the slim image's) against FHEModelServer (the default image's).

The oracle: on the same ciphertexts and keys, for every model family the kit trains, the
compiler runtime returns the very bytes ``FHEModelServer.run`` returns; and it serves from a
process in which torch, scikit-learn, scipy and concrete-ml cannot be imported.

Byte equality is checked within one process: a circuit with bootstraps (tree, network) gives
other result bytes in another process even under FHEModelServer alone (measured: 4098 of the
tree result's 4132 words differ between two processes, with the same decryption), as the
runtime's bootstrap FFT is set up per process; within a process, repeated runs are identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from bench.images import REPO_ROOT
from common.artifact import SERVER_ZIP
from inference.model import FheModel
from inference.runtimes import (
    RUNTIME_COMPILER,
    RUNTIME_CONCRETE_ML,
    CompilerRuntime,
    ModelLoadError,
    SavedServer,
    compilation_options,
    compile_library,
    decode_configuration,
)
from tests.fixtures.models import FixtureModel, build_fixture_model
from tests.fixtures.serving import KeyedClient, make_keyed_client

FAMILIES = ("linear", "tree", "nn")
ROWS = 2
HEAVY = ("torch", "sklearn", "scipy", "concrete.ml", "concrete.fhe")
# Run in a fresh interpreter: the compiler runtime with the heavy packages made unimportable.
TORCH_FREE_RUN = f"""
import sys
sys.modules.update(dict.fromkeys({HEAVY!r}))
from pathlib import Path
from inference.model import FheModel
model_dir, cache, keys, out = map(Path, sys.argv[1:5])
model = FheModel.load(model_dir, runtime="compiler", circuit_cache_dir=cache)
loaded = model.deserialize_keys(keys.read_bytes())
for query in sys.argv[5:]:
    Path(query + ".out").write_bytes(model.run(Path(query).read_bytes(), loaded))
out.write_text(",".join(m for m in {HEAVY!r} if sys.modules.get(m) is not None))
"""


@pytest.fixture(scope="module")
def families(fixture_models: dict[str, FixtureModel], keyed: dict[str, KeyedClient],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyedClient]:
    """A keyed client of each family: the session's linear and tree, a small network."""
    nn = build_fixture_model("nn", tmp_path_factory.mktemp("models") / "nn")
    return {**keyed, "nn": make_keyed_client(nn, tmp_path_factory.mktemp("keys-nn"))}


@pytest.mark.parametrize("family", FAMILIES)
def test_compiler_runtime_returns_fhemodelserver_bytes(
        family: str, families: dict[str, KeyedClient], tmp_path: Path) -> None:
    fhe = families[family]
    reference = FheModel.load(fhe.model.model_dir, runtime=RUNTIME_CONCRETE_ML)
    slim = FheModel.load(fhe.model.model_dir, runtime=RUNTIME_COMPILER,
                         circuit_cache_dir=tmp_path)
    assert (reference.runtime.name, slim.runtime.name) == (RUNTIME_CONCRETE_ML, RUNTIME_COMPILER)
    assert slim.keyset_shape == reference.keyset_shape
    reference_keys, slim_keys = (m.deserialize_keys(fhe.keys) for m in (reference, slim))
    for row in fhe.model.scaled_test[:ROWS]:
        query = fhe.encrypt(row)
        result = slim.run(query, slim_keys)
        assert result == reference.run(query, reference_keys)
        np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))


@pytest.mark.parametrize("family", FAMILIES)
def test_compiler_runtime_serves_without_torch_sklearn_or_concrete_ml(
        family: str, families: dict[str, KeyedClient], tmp_path: Path) -> None:
    fhe = families[family]
    rows = fhe.model.scaled_test[:ROWS]
    queries = [tmp_path / f"q{n}.bin" for n in range(len(rows))]
    for query, row in zip(queries, rows, strict=True):
        query.write_bytes(fhe.encrypt(row))
    (tmp_path / "keys.ekl").write_bytes(fhe.keys)
    subprocess.run([sys.executable, "-c", TORCH_FREE_RUN, str(fhe.model.model_dir),
                    str(tmp_path / "circuits"), str(tmp_path / "keys.ekl"),
                    str(tmp_path / "heavy.txt"), *map(str, queries)],
                   check=True, cwd=REPO_ROOT, timeout=300)
    assert (tmp_path / "heavy.txt").read_text() == ""
    for query, row in zip(queries, rows, strict=True):
        result = (query.parent / (query.name + ".out")).read_bytes()
        np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))


def test_the_circuit_is_compiled_once_then_loaded_from_the_cache(
        fixture_models: dict[str, FixtureModel], tmp_path: Path) -> None:
    cache = tmp_path / "circuits"
    first = CompilerRuntime.load(fixture_models["tree"].model_dir, cache_dir=cache)
    again = CompilerRuntime.load(fixture_models["tree"].model_dir, cache_dir=cache)
    other = CompilerRuntime.load(fixture_models["linear"].model_dir, cache_dir=cache)
    assert (first.compiled, again.compiled, other.compiled) == (True, False, True)
    assert first.library_dir == again.library_dir != other.library_dir
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted(
        [first.library_dir.name, other.library_dir.name])


def _load_in_child(model_dir: str, cache: str) -> bool:
    return CompilerRuntime.load(Path(model_dir), cache_dir=Path(cache)).compiled


def test_workers_starting_together_compile_once(fixture_models: dict[str, FixtureModel],
                                                tmp_path: Path) -> None:
    args = (str(fixture_models["tree"].model_dir), str(tmp_path / "circuits"))
    with get_context("spawn").Pool(3) as pool:
        compiled = pool.starmap(_load_in_child, [args] * 3)
    assert sorted(compiled) == [False, False, True]


def _server_zip_copy(model: FixtureModel, tmp_path: Path, **members: bytes | None) -> Path:
    """A model folder whose server.zip has ``members`` replaced (None: removed)."""
    target = tmp_path / "model"
    target.mkdir()
    with zipfile.ZipFile(model.model_dir / SERVER_ZIP) as src, \
            zipfile.ZipFile(target / SERVER_ZIP, "w") as dst:
        for name in src.namelist():
            data = members.get(name.replace(".", "_"), src.read(name))
            if data is not None:
                dst.writestr(name, data)
    return target


def _member(model: FixtureModel, name: str) -> bytes:
    with zipfile.ZipFile(model.model_dir / SERVER_ZIP) as archive:
        return archive.read(name)


def test_a_compile_with_other_parameters_than_the_saved_ones_is_not_served(
        fixture_models: dict[str, FixtureModel], tmp_path: Path) -> None:
    """client.specs.json is what clients made their keys for: the compile must match it."""
    tree = fixture_models["tree"]
    specs = json.loads(_member(tree, "client.specs.json"))
    specs["keyset"]["lweSecretKeys"][1]["params"]["lweDimension"] += 1
    model_dir = _server_zip_copy(tree, tmp_path, client_specs_json=json.dumps(specs).encode())
    with pytest.raises(ModelLoadError, match=r"other parameters than the one server\.zip was"
                                             r" saved with"):
        CompilerRuntime.load(model_dir, cache_dir=tmp_path / "circuits")


@pytest.mark.parametrize(("members", "message"), [
    ({"versions_json": b'{"concrete-python": "2.9.0", "python": "3.11"}'},
     "saved with concrete-python 2.9.0, this image has 2.10.0"),
    ({"is_simulated": b"1"}, "holds a simulated circuit"),
    ({"circuit_mlir": None}, "holds no circuit.mlir and configuration.json"),
    ({"configuration_json": b'{"use_gpu": true, "dataflow_parallelize": true}'},
     "sets use_gpu, dataflow_parallelize, which the compiler runtime does not support"),
    ({"client_specs_json": json.dumps({"tfhers_specs": {
        "input_types_per_func": {"f": [{"bit_width": 8}]}}}).encode()},
     "is a TFHE-rs interoperable circuit"),
], ids=["version", "simulated", "no-mlir", "gpu", "tfhers"])
def test_server_zips_it_cannot_serve_are_refused_with_the_fix(
        members: dict[str, bytes | None], message: str,
        fixture_models: dict[str, FixtureModel], tmp_path: Path) -> None:
    model_dir = _server_zip_copy(fixture_models["linear"], tmp_path, **members)
    with pytest.raises(ModelLoadError, match=message):
        CompilerRuntime.load(model_dir, cache_dir=tmp_path / "circuits")
    assert [p for p in (tmp_path / "circuits").glob("*") if p.is_dir()] == []


def test_a_missing_concrete_ml_says_which_runtime_to_use(
        fixture_models: dict[str, FixtureModel], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "concrete.ml.deployment", None)
    with pytest.raises(ModelLoadError, match="set FHE_RUNTIME=compiler or use the default image"):
        FheModel.load(fixture_models["linear"].model_dir, runtime=RUNTIME_CONCRETE_ML)


@pytest.mark.parametrize("changes", [
    {},
    {"global_p_error": 0.01, "p_error": None},
    {"global_p_error": None, "p_error": 0.001},
    {"global_p_error": None, "p_error": None},
    {"parameter_selection_strategy": "mono", "compress_evaluation_keys": False},
    {"multi_parameter_strategy": "precision_and_norm2", "security_level": 132},
], ids=["saved", "global-p-error", "p-error", "defaults", "mono-uncompressed", "norm2-132"])
def test_options_from_the_saved_configuration_compile_what_concrete_compiles(
        changes: dict[str, object], fixture_models: dict[str, FixtureModel],
        tmp_path: Path) -> None:
    """The options read without concrete.fhe give the program concrete's Server.create gives."""
    import jsonpickle
    from concrete import fhe

    saved = SavedServer.read(fixture_models["tree"].model_dir / SERVER_ZIP)
    raw = json.loads(_member(fixture_models["tree"], "configuration.json"))
    configuration = fhe.Configuration().fork(**jsonpickle.loads(json.dumps(raw))).fork(**{
        key: (getattr(fhe.compilation.configuration, _ENUMS[key])(value)
              if key in _ENUMS else value) for key, value in changes.items()})
    expected = fhe.Server.create(saved.mlir, configuration, False).program_info.serialize()
    mine = decode_configuration(jsonpickle.dumps(configuration.__dict__).encode())
    compilation_options(mine, [])  # builds
    compile_library(SavedServer(saved.sha256, saved.mlir, mine, [], None), tmp_path)
    from concrete.compiler import Library

    assert json.loads(Library(str(tmp_path)).get_program_info().serialize()) == json.loads(
        expected)


_ENUMS = {"parameter_selection_strategy": "ParameterSelectionStrategy",
          "multi_parameter_strategy": "MultiParameterStrategy", "security_level": "SecurityLevel"}


def test_a_half_written_cache_entry_is_compiled_again(
        fixture_models: dict[str, FixtureModel], tmp_path: Path) -> None:
    cache = tmp_path / "circuits"
    first = CompilerRuntime.load(fixture_models["linear"].model_dir, cache_dir=cache)
    (first.library_dir / "sharedlib.so").unlink()
    again = CompilerRuntime.load(fixture_models["linear"].model_dir, cache_dir=cache)
    assert again.compiled and (again.library_dir / "sharedlib.so").is_file()
    assert again.name == RUNTIME_COMPILER


def _by_name(enum: str, member: str) -> dict[str, object]:
    """An enum as jsonpickle writes it under the images' Python (getattr by member name)."""
    return {"py/reduce": [{"py/function": "builtins.getattr"}, {"py/tuple": [
        {"py/type": f"concrete.fhe.compilation.configuration.{enum}"}, member]}]}


def test_enums_pickled_by_member_name_read_like_enums_pickled_by_value(
        fixture_models: dict[str, FixtureModel]) -> None:
    """The training image's Python pickles concrete's enums by name, the host's by value."""
    by_value = decode_configuration(_member(fixture_models["tree"], "configuration.json"))
    raw = json.loads(_member(fixture_models["tree"], "configuration.json"))
    raw.update(parameter_selection_strategy=_by_name("ParameterSelectionStrategy", "MULTI"),
               multi_parameter_strategy=_by_name("MultiParameterStrategy", "PRECISION"),
               security_level=_by_name("SecurityLevel", "SECURITY_128_BITS"))
    by_name = decode_configuration(json.dumps(raw).encode())
    assert (by_name["parameter_selection_strategy"], by_name["multi_parameter_strategy"],
            by_name["security_level"]) == ("multi", "precision", 128)
    assert by_name == by_value
    raw["security_level"] = _by_name("SecurityLevel", "SECURITY_256_BITS")
    with pytest.raises(ModelLoadError, match=r"security_level is SecurityLevel\.SECURITY_256_BITS,"
                                             r" which the compiler runtime does not know"):
        decode_configuration(json.dumps(raw).encode())


def test_a_cache_others_may_write_in_is_refused(fixture_models: dict[str, FixtureModel],
                                                tmp_path: Path) -> None:
    """The worker dlopens what it finds in the cache: a shared folder could plant code."""
    cache = tmp_path / "circuits"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(ModelLoadError, match=r"must belong to this user and be writable by no"
                                             r" one else; set FHE_CIRCUIT_CACHE_DIR"):
        CompilerRuntime.load(fixture_models["tree"].model_dir, cache_dir=cache)
    assert list(cache.iterdir()) == []
    cache.chmod(0o700)
    assert CompilerRuntime.load(fixture_models["tree"].model_dir, cache_dir=cache).compiled
