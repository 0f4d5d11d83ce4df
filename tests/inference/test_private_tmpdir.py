"""`serve` with a private TMPDIR (0700): nginx's workers still reach the gunicorn socket.

Run as root, nginx starts its workers as another user (``nobody``); with the runtime directory
in a 0700 TMPDIR they got "Permission denied" on the socket and /ping never turned healthy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import requests

from inference.serve import SHARED_TMP, others_can_traverse, runtime_parent
from inference.settings import SettingsError
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import KeyedClient, Uploader, serve_process, server_settings


def test_serve_with_a_0700_tmpdir_answers_through_nginx(
        fixture_models: dict[str, FixtureModel], keyed: dict[str, KeyedClient],
        uploader: Uploader, s3_server: LocalS3Server, serving_bucket: str,
        tmp_path: Path) -> None:
    private = tmp_path / "private-tmp"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket,
                               tmp_path / "cache", port=free_port(), host="127.0.0.1",
                               timeout=60)
    with serve_process(settings, tmp_path / "serve.log",
                       extra_env={**s3_server.env(), "TMPDIR": str(private)}) as serve:
        fhe = keyed["tree"]
        row = fhe.model.scaled_test[2]
        response = requests.post(f"{serve.url}/invocations", timeout=120,
                                 data=uploader.request(fhe, row[None, :]))
        assert response.status_code == 200, response.content[:300]
        np.testing.assert_allclose(fhe.decrypt(response.content), fhe.expected(row))
    log = serve.log.read_text(errors="replace")
    assert "Permission denied" not in log, log[-3000:]
    assert serve.process.returncode == 0, log[-3000:]


def test_root_moves_the_runtime_dir_out_of_a_private_tmpdir(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert not others_can_traverse(private)
    assert runtime_parent(private, euid=0) == SHARED_TMP
    assert others_can_traverse(SHARED_TMP)
    assert runtime_parent(SHARED_TMP, euid=0) == SHARED_TMP
    assert runtime_parent(private, euid=os.getuid() or 1000) == private  # nginx runs as us


def test_no_traversable_folder_is_a_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    monkeypatch.setattr("inference.serve.SHARED_TMP", private)
    with pytest.raises(SettingsError, match=r"set TMPDIR to a folder with o\+x on every level"):
        runtime_parent(private, euid=0)
