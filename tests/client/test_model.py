"""Fetching client.zip + manifest: versions, fingerprint, archive safety, download cache."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from client.errors import FingerprintMismatchError, ModelArtifactError, VersionMismatchError
from client.model import check_versions, load_client_model, read_client_members
from client.storage import S3Storage
from common.artifact import Manifest, runtime_versions
from tests.client.conftest import make_model_tar

HERE = runtime_versions()


def test_check_versions_accepts_this_environment() -> None:
    check_versions(HERE, source="m")
    check_versions({**HERE, "python": HERE["python"].rsplit(".", 1)[0] + ".99"}, source="m")


def test_check_versions_names_every_mismatch_and_the_fix() -> None:
    built = {**HERE, "python": "3.12.4", "concrete-python": "2.9.0", "concrete-ml": "1.8.0"}
    with pytest.raises(VersionMismatchError) as info:
        check_versions(built, source="s3://b/model.tar.gz")
    message = str(info.value)
    assert "Python: model built with 3.12.4" in message
    assert f"this interpreter is {HERE['python']}" in message
    assert "concrete-python: model built with 2.9.0" in message
    assert "concrete-ml: model built with 1.8.0" in message
    assert "pip install concrete-python==2.9.0 concrete-ml==1.8.0" in message
    assert "Python 3.12" in message
    assert isinstance(info.value, RuntimeError)


def test_check_versions_reports_unrecorded_versions() -> None:
    with pytest.raises(VersionMismatchError, match="concrete-ml: model built with an unrecorded"):
        check_versions({k: v for k, v in HERE.items() if k != "concrete-ml"}, source="m")


@pytest.mark.parametrize("package", ["concrete-python", "concrete-ml"])
def test_check_versions_compares_the_patch_level(package: str) -> None:
    major, minor, patch = HERE[package].split(".")[:3]
    other = f"{major}.{minor}.{int(patch) + 1}"
    expected = rf"{package}: model built with {other}, installed here {HERE[package]}"
    with pytest.raises(VersionMismatchError, match=expected):
        check_versions({**HERE, package: other}, source="m")


def test_check_versions_refuses_an_unrecorded_python() -> None:
    with pytest.raises(VersionMismatchError,
                       match="Python: model built with an unrecorded version, this interpreter is"):
        check_versions({k: v for k, v in HERE.items() if k != "python"}, source="m")


def _copy(fixture_models, tmp_path: Path, kind: str = "linear") -> Path:
    target = tmp_path / "model"
    shutil.copytree(fixture_models[kind].model_dir, target)
    return target


def test_version_mismatch_is_raised_before_concrete_reads_client_zip(
    fixture_models, tmp_path, monkeypatch
) -> None:
    model_dir = _copy(fixture_models, tmp_path)
    manifest = Manifest.from_json((model_dir / "manifest.json").read_bytes())
    doc = manifest.to_json().replace(HERE["python"].encode(), b"3.9.1")
    (model_dir / "manifest.json").write_bytes(doc)
    import concrete.ml.deployment as deployment

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("FHEModelClient must not be reached")

    monkeypatch.setattr(deployment, "FHEModelClient", boom)
    with pytest.raises(VersionMismatchError, match=r"Python: model built with 3\.9\.1"):
        load_client_model(model_dir, storage=None, cache_dir=tmp_path / "cache")


def test_tampered_client_zip_is_a_fingerprint_mismatch(fixture_models, tmp_path) -> None:
    model_dir = _copy(fixture_models, tmp_path)
    with open(model_dir / "client.zip", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(
        FingerprintMismatchError, match=r"sha256\(client\.zip\) is [0-9a-f]{64} but"
    ):
        load_client_model(model_dir, storage=None, cache_dir=tmp_path / "cache")


def test_expected_fingerprint_is_enforced(fixture_models, tmp_path) -> None:
    linear = fixture_models["linear"]
    model = load_client_model(
        linear.model_dir,
        storage=None,
        cache_dir=tmp_path,
        expected_fingerprint=linear.manifest.client_fingerprint,
    )
    assert model.fingerprint == linear.manifest.client_fingerprint
    with pytest.raises(FingerprintMismatchError, match=r"but 0{64} was expected"):
        load_client_model(
            linear.model_dir, storage=None, cache_dir=tmp_path, expected_fingerprint="0" * 64
        )


def test_missing_model_names_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match=r"give s3://…/model\.tar\.gz"):
        load_client_model(tmp_path / "nope", storage=None, cache_dir=tmp_path)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_archive_member_paths_are_never_used(tmp_path: Path) -> None:
    link = tarfile.TarInfo("client.zip")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(
        _tar(
            [
                _file("../../escape.txt", b"x"),
                _file("/abs/manifest.json", b"x"),
                (link, None),
                _file("manifest.json", b"{}"),
            ]
        )
    )
    with pytest.raises(ModelArtifactError, match=r"archive lacks client\.zip"):
        read_client_members(archive, source="evil")
    assert not (tmp_path.parent.parent / "escape.txt").exists()


def test_archive_keeps_only_client_files(fixture_models, tmp_path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(
        make_model_tar(fixture_models["linear"].model_dir, extra={"../outside.txt": b"x"})
    )
    members = read_client_members(archive, source="m")
    assert sorted(members) == ["client.zip", "manifest.json"]
    model = load_client_model(archive, storage=None, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in model.model_dir.iterdir()) == ["client.zip", "manifest.json"]
    assert not (tmp_path / "outside.txt").exists()


def test_duplicate_member_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "dup.tar.gz"
    archive.write_bytes(_tar([_file("client.zip", b"a"), _file("./client.zip", b"b")]))
    with pytest.raises(ModelArtifactError, match=r"holds client\.zip twice"):
        read_client_members(archive, source="dup")


def test_not_a_tar_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not a tar")
    with pytest.raises(ModelArtifactError, match=r"not a readable tar\.gz archive"):
        load_client_model(archive, storage=None, cache_dir=tmp_path / "cache")


def test_s3_archive_is_downloaded_once(fixture_models, upload_model, s3_client, tmp_path) -> None:
    uri = upload_model(fixture_models["linear"])
    first = S3Storage(s3_client)
    model = load_client_model(uri, storage=first, cache_dir=tmp_path)
    assert first.bytes_downloaded > 0
    assert model.manifest == fixture_models["linear"].manifest
    second = S3Storage(s3_client)
    again = load_client_model(uri, storage=second, cache_dir=tmp_path)
    assert second.bytes_downloaded == 0
    assert again.model_dir == model.model_dir


def test_replaced_s3_archive_is_fetched_again(
    fixture_models, upload_model, s3_client, tmp_path
) -> None:
    uri = upload_model(fixture_models["linear"])
    first = load_client_model(uri, storage=S3Storage(s3_client), cache_dir=tmp_path)
    upload_model(fixture_models["tree"])
    second = load_client_model(uri, storage=S3Storage(s3_client), cache_dir=tmp_path)
    assert second.fingerprint == fixture_models["tree"].manifest.client_fingerprint
    assert second.model_dir != first.model_dir


def test_missing_s3_archive_is_a_storage_error(s3_client, bucket, tmp_path) -> None:
    from client.errors import StorageError

    with pytest.raises(StorageError, match=r"reading s3://.*/missing/model\.tar\.gz"):
        load_client_model(
            f"s3://{bucket}/missing/model.tar.gz", storage=S3Storage(s3_client), cache_dir=tmp_path
        )
