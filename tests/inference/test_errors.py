"""The server's errors, nginx's own refusals and the docs all answer from the one error table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common import contract
from common.contract import ERROR_CODES, error_code
from inference import errors

REPO = Path(__file__).resolve().parents[2]
SERVING_ERRORS = [errors.ServingError, *(
    value for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, errors.ServingError)
    and value is not errors.ServingError)]
# nginx.conf: `return 413 '{"error": {...}}';` (placeholders such as @{max_body_bytes} inside).
NGINX_RETURN = re.compile(r"return (?P<status>\d{3}) '(?P<body>\{.*\})';")


def test_every_code_and_status_pair_is_one_row() -> None:
    pairs = [(row.code, row.status) for row in ERROR_CODES]
    assert len(pairs) == len(set(pairs))
    assert all(error_code(row.code, row.status) is row for row in ERROR_CODES)


@pytest.mark.parametrize("cls", SERVING_ERRORS, ids=lambda cls: cls.__name__)
def test_serving_errors_take_status_and_code_from_the_table(cls: type) -> None:
    error = cls("message")
    assert error.row in ERROR_CODES
    assert (error.status, error.code) == (error.row.status, error.row.code)
    assert json.loads(error.row.body("message")) == {
        "error": {"status": error.status, "code": error.code, "message": "message"}}


def test_nginx_refusals_are_rows_of_the_table() -> None:
    conf = (REPO / "inference" / "nginx.conf").read_text()
    returns = list(NGINX_RETURN.finditer(conf))
    assert len(returns) == 3, "every `return` of nginx.conf answers a JSON error body"
    for match in returns:
        body = json.loads(re.sub(r"@\{\w+\}", "0", match["body"]))["error"]
        assert body["status"] == int(match["status"])
        assert error_code(body["code"], body["status"]) is not None, body


def test_the_serving_docs_list_exactly_the_servers_errors() -> None:
    readme = (REPO / "docs" / "serving.md").read_text()
    listed = {(code, int(status)) for status, code in
              re.findall(r"^\| (\d{3}) \| `(\w+)` \|", readme, flags=re.MULTILINE)}
    served = {(cls.error.code, cls.error.status) for cls in SERVING_ERRORS}
    assert served | {(contract.METHOD_NOT_ALLOWED.code, 405)} == listed
