"""The gate alone, in front of an app that answers 200: what a broken keys file, two keys in one
request or a WebSocket get."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

import serving.gate
from serving.gate import Gate
from serving.keys import KEYS_ENV, KeysFileError, create_key, load_keys


async def ok(scope: dict, receive: Any, send: Any) -> None:
    """200 "ok" to a request; a WebSocket accepted and sent "ok"."""
    if scope["type"] == "websocket":
        socket = WebSocket(scope, receive, send)
        await socket.accept()
        await socket.send_text("ok")
        await socket.close()
    else:
        await PlainTextResponse("ok")(scope, receive, send)


@pytest.fixture
def keys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keys.json"
    monkeypatch.setenv(KEYS_ENV, str(path))
    return path


def client() -> TestClient:
    return TestClient(Gate(ok, {"/recommend": "recommend"}))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"broken":',
        '{"abc": {"scopes": ["admin"]}}',
        '{"abc": {"sha256": "0"}}',
        '{"abc": {"sha256": "0x' + "0" * 62 + '", "scopes": ["admin"]}}',
        '{"abc": {"sha256": "' + "0" * 64 + '", "scopes": [{"admin": 1}]}}',
        '{"abc": {"sha256": "' + "0" * 64 + '", "scopes": ["root"]}}',
    ],
)
def test_a_broken_keys_file_is_named_in_one_sentence(keys_path: Path, text: str) -> None:
    keys_path.write_text(text)
    with pytest.raises(KeysFileError, match=f"^The keys file {keys_path} "):
        load_keys(keys_path)


def test_a_keys_file_broken_from_the_start_refuses_every_key_at_once(
    keys_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: '[]' in the keys file made every keyed request hang 60 s, then a plain-text
    500 with nothing in the log."""
    keys_path.write_text("[]")
    with caplog.at_level(logging.ERROR, "omnichannel_ml"):
        answer = client().post("/recommend", headers=bearer("omni_abc_def"))
    assert answer.status_code == 503 and "keys file" in answer.json()["error"]
    assert [r.getMessage() for r in caplog.records] == [
        f"The keys file {keys_path} is not a JSON object of keys by id. Every key is refused "
        "(503) until it is mended."
    ]


def test_a_keys_file_broken_later_keeps_the_keys_read_before(
    keys_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_key(["recommend"], keys_path)
    gate = client()
    assert gate.post("/recommend", headers=bearer(key)).status_code == 200
    keys_path.write_text('{"cut short": ')  # a hand edit, a copy cut short
    os.utime(keys_path, (1, 1))  # another modification time, whatever the clock's resolution
    with caplog.at_level(logging.ERROR, "omnichannel_ml"):
        answers = [gate.post("/recommend", headers=bearer(key)).status_code for _ in range(3)]
    assert answers == [200, 200, 200]
    assert len(caplog.records) == 1 and "stay in force" in caplog.records[0].getMessage()


def test_two_authorization_headers_are_refused(keys_path: Path) -> None:
    """Regression: the last of two headers won, so an invalid key followed by a valid one
    passed."""
    key = create_key(["recommend"], keys_path)
    headers = [("authorization", "Bearer omni_x_y"), ("authorization", f"Bearer {key}")]
    answer = client().post("/recommend", headers=headers)
    assert answer.status_code == 400 and answer.json()["error"].startswith("Send one")


def test_a_websocket_needs_a_key_too(keys_path: Path) -> None:
    """Regression: WebSocket connections passed the gate without a key."""
    with pytest.raises(WebSocketDisconnect), client().websocket_connect("/recommend") as socket:
        socket.receive_text()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("application/merge-patch+json", 200),
        ("application/x-www-form-urlencoded", 415),
        ("text/plain", 415),
        ("multipart/form-data; boundary=x", 415),
    ],
)
def test_a_body_must_be_declared_json(keys_path: Path, content_type: str, status: int) -> None:
    """Regression: a form body (``item_id=I000010``) was answered 200 — BentoML reads forms
    and files as the request's fields too."""
    key = create_key(["recommend"], keys_path)
    headers = {**bearer(key), "content-type": content_type}
    answer = client().post("/recommend", content=b'{"item_id": "I000010"}', headers=headers)
    assert answer.status_code == status
    if status == 415:
        assert answer.json()["error"].startswith("Send the body as JSON")


def call(key: str, messages: list[dict | None]) -> tuple[list[dict], list[dict]]:
    """One POST through the gate from a client that sends ``messages`` (None: nothing more,
    ever): what the gate sent back, and the requests that reached the app behind it."""
    sent: list[dict] = []
    reached: list[dict] = []
    queue = iter(messages)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        reached.append(scope)
        await ok(scope, receive, send)

    async def receive() -> dict:
        message = next(queue)
        if message is None:
            await asyncio.Event().wait()  # a client that stalls
        return message  # type: ignore[return-value]

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/recommend",
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }  # fmt: skip
    asyncio.run(Gate(app, {"/recommend": "recommend"})(scope, receive, send))
    return sent, reached


PART = {"type": "http.request", "body": b'{"a', "more_body": True}


def test_a_client_gone_mid_body_reaches_nothing(keys_path: Path) -> None:
    """Regression: the service read the body and logged the disconnect as a 500 with its
    traceback."""
    key = create_key(["recommend"], keys_path)
    assert call(key, [PART, {"type": "http.disconnect"}]) == ([], [])


def test_a_stalled_body_is_408(keys_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a client announcing more than it sent held its connection for as long as it
    liked."""
    monkeypatch.setattr(serving.gate, "BODY_SECONDS", 0.2)
    sent, reached = call(create_key(["recommend"], keys_path), [PART, None])
    assert sent[0]["status"] == 408 and reached == []
