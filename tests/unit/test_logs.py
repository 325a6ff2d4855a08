"""Log records: one JSON object per line, each with the request id of the request that made it."""

from __future__ import annotations

import json
import logging
import sys

from service.logs import JsonFormatter, RequestIdFilter, request_id_var


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("gmem_broker.test", logging.WARNING, __file__, 1, msg, ("x",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def formatted(rec: logging.LogRecord) -> dict[str, object]:
    RequestIdFilter().filter(rec)
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    doc: dict[str, object] = json.loads(line)
    return doc


def test_the_request_id_comes_from_the_context() -> None:
    token = request_id_var.set("req-7")
    try:
        doc = formatted(record("converted %s"))
    finally:
        request_id_var.reset(token)
    assert doc["request_id"] == "req-7"
    assert doc["message"] == "converted x"
    assert doc["level"] == "warning"
    assert doc["logger"] == "gmem_broker.test"


def test_outside_a_request_it_is_null_and_extra_fields_are_kept() -> None:
    doc = formatted(record("m %s", route="/v1/vms", status=201, color_message="\x1b[36mm"))
    assert doc["request_id"] is None
    assert doc["route"] == "/v1/vms"
    assert doc["status"] == 201
    assert "color_message" not in doc


def test_an_explicit_request_id_wins_and_exceptions_are_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        rec = record("failed %s", request_id="req-9")
        rec.exc_info = sys.exc_info()
    doc = formatted(rec)
    assert doc["request_id"] == "req-9"
    assert "ValueError: bad" in str(doc["exception"])
