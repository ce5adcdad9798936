"""The gate in front of every route: API keys and scopes, and the request size limit.

It runs before BentoML reads or validates a body, so a request without a valid key learns
nothing about the API (401), a key without the route's scope is refused (403), and an
oversized body is refused (413) before it is read into memory. Keys are re-read when the keys
file changes, so ``omni keys create`` takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from serving.keys import KeysFileError, keys_file, load_keys, scopes_of

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BODY_ENV = "OMNI_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a full batch of 1,000 events is about 250 kB
#: Seconds a client has to send a whole body (a stalled upload holds a connection, not more).
BODY_SECONDS = 30
#: Open to anyone: the probes, and the API's own description (no data in it).
PUBLIC = frozenset(
    {"/livez", "/readyz", "/healthz", "/", "/docs", "/docs.json", "/ui", "/ui/app.js"}
)
PUBLIC_PREFIXES = ("/static_content/",)
ADMIN = "admin"

logger = logging.getLogger("omnichannel_ml")


def body_limit() -> int:
    """The request body limit in bytes: ``$OMNI_MAX_BODY_BYTES`` (default 1 MiB)."""
    text = os.environ.get(MAX_BODY_ENV, str(DEFAULT_MAX_BODY))
    if not (text.isascii() and text.isdigit() and 1024 <= int(text) <= 1 << 30):
        raise ValueError(f"{MAX_BODY_ENV}={text!r} is not a number of bytes in [1024, 2^30].")
    return int(text)


NOSNIFF = (b"x-content-type-options", b"nosniff")
#: Added to every answer of a route behind a key.
PRIVATE_HEADERS = ((b"cache-control", b"no-store"), NOSNIFF)
#: Headers a request may carry once only.
SINGLE_HEADERS = ("authorization", "content-type", "content-length")


class KeyRing:
    """The keys file as last read, read again when it changes; shared by the gate and the
    readiness probe, so that a probe costs no read and both see the same keys."""

    def __init__(self) -> None:
        self._keys: dict[str, dict] | None = None
        self._stamp: tuple[Path, float | None] | None = None
        self._lock = threading.Lock()  # the gate on the event loop, the probe in a thread

    def current(self) -> dict[str, dict] | None:
        """The keys, read again when the file changes. A file that cannot be read is logged
        once and the last keys read stay in force (None when there are none to keep)."""
        path = keys_file()
        try:
            mtime: float | None = path.stat().st_mtime if path.exists() else None
        except OSError:
            mtime = -1.0
        with self._lock:
            if self._stamp != (path, mtime):
                if self._stamp is None or self._stamp[0] != path:
                    self._keys = None  # another file: what the last one held is not in force
                self._stamp = (path, mtime)
                if mtime is None:
                    logger.warning(
                        "The keys file %s does not exist: every key is refused (401) until "
                        "omni keys create makes it.",
                        path,
                    )
                try:
                    self._keys = load_keys(path)
                except KeysFileError as exc:
                    if not self._keys:  # none was ever read, or the file held none: none to keep
                        self._keys = None
                        logger.error("%s Every key is refused (503) until it is mended.", exc)
                    else:
                        logger.error("%s The keys read before stay in force.", exc)
            return self._keys


#: The keys of this process's service.
KEYS = KeyRing()


class Gate:
    """ASGI middleware: ``routes`` maps a path to the scope it needs (others need ``admin``)."""

    def __init__(self, app: Any, routes: dict[str, str], max_body: int | None = None) -> None:
        self.app = app
        self.routes = routes
        self.max_body = max_body or body_limit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/docs":  # BentoML serves its Swagger UI at "/"; /docs is where people look
            scope = {**scope, "path": "/", "raw_path": b"/"}
        if scope["type"] == "websocket":  # no route takes one; none passes without a key
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or path in PUBLIC or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, PRIVATE_HEADERS)  # answers hold customers' data: not cached
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = dict(pairs)
        # Headers the gate decides on, sent twice: it would read the last, Starlette the first
        # (two Content-Types passed a form body as JSON).
        twice = [h for h in SINGLE_HEADERS if sum(name == h for name, _ in pairs) > 1]
        if twice:
            await _respond(send, 400, f"Send one {twice[0].title()} header, not several.")
            return
        refusal = self._refusal(headers.get("authorization", ""), self.routes.get(path, ADMIN))
        if refusal is not None:
            await _respond(send, *refusal)
            return
        if scope.get("method") in ("POST", "PUT", "PATCH") and not _is_json(headers):
            await _respond(send, 415, "Send the body as JSON (Content-Type: application/json).")
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _respond(send, 413, f"The request body is over {self.max_body} bytes.")
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            # Read here, whole, so that what reaches the service is a body or nothing: a client
            # that goes away or stalls mid-body costs no worker and no error log.
            try:
                body = await asyncio.wait_for(_read_at_most(receive, self.max_body), BODY_SECONDS)
            except TimeoutError:
                await _respond(send, 408, f"The request body took over {BODY_SECONDS} s.")
                return
            except _Disconnected:
                return
            if body is None:
                await _respond(send, 413, f"The request body is over {self.max_body} bytes.")
                return
            receive = _replay(body)
        await self.app(scope, receive, send)

    def _refusal(self, header: str, scope: str) -> tuple[int, str] | None:
        if not header.lower().startswith("bearer "):
            return 401, "Missing 'Authorization: Bearer <key>' header."
        keys = KEYS.current()
        if keys is None:
            return 503, "The service cannot read its keys file; its log says why."
        scopes = scopes_of(header[7:].strip(), keys)
        if scopes is None:
            return 401, "Invalid API key."
        if scope not in scopes and ADMIN not in scopes:
            return 403, f"This key lacks the {scope!r} scope."
        return None


def _is_json(headers: dict[str, str]) -> bool:
    """Whether a body is declared JSON (``application/json``, ``…+json``, or not declared):
    BentoML would read a form or a file as the request's fields too."""
    declared = headers.get("content-type", "").split(";")[0].strip().lower()
    return declared in ("", "application/json") or declared.endswith("+json")


def _json_start(status: int, body: bytes) -> dict[str, Any]:
    """The start of a JSON answer of ``body``: its own headers only, made for each answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http.response.start", "status": status, "headers": [*headers, NOSNIFF]}


def _with_headers(send: Send, added: tuple[tuple[bytes, bytes], ...]) -> Send:
    """``send``, adding ``added`` to the response's headers."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return sending


async def _respond(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()  # as every answer
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Disconnected(Exception):
    """The client went away before its body was whole."""


async def _read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


#: Answers every API may give besides BentoML's documented 200 / 400 / 404 / 500.
EXTRA_RESPONSES = {
    "401": "Missing or invalid API key.",
    "403": "The key lacks the route's scope.",
    "408": "The request body did not arrive whole in time.",
    "409": "A valid request that cannot be done (beyond the model's horizon, not enough stock "
    "to reserve, an id already recorded with other content).",
    "413": "The request body is too large.",
    "415": "The body is not declared JSON (Content-Type).",
    "422": "A field breaks its type or a limit, or an event breaks the contract (all named).",
    "503": "Not ready (see /readyz), or the event store is down; retry after Retry-After.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


#: The Swagger page's policy: its own scripts (files: no inline script runs) and styles only.
#: BentoML's page also carries a Google Tag Manager snippet (inline, loading an outside
#: script) and badge images; with this policy the browser runs and loads none of them.
DOCS_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_DOCS_HEADERS = ((b"content-security-policy", DOCS_POLICY.encode()), NOSNIFF)


class DocumentedAPI:
    """ASGI middleware completing BentoML's ``/docs.json`` with what this API really does, and
    giving its Swagger page (``/docs``) a content security policy (:data:`DOCS_POLICY`).

    BentoML leaves ``requestBody.required`` out (so an empty POST looks valid) and documents
    only 200 / 400 / 404 / 500; here every body is required, the bearer-key security scheme is
    declared, and the 401 / 403 / 409 / 413 / 503 answers are documented.
    """

    def __init__(self, app: Any, path: str = "/docs.json") -> None:
        self.app = app
        self.path = path
        self.document: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in ("/", "/docs"):  # (see Gate)
            await self.app(scope, receive, _with_headers(send, _DOCS_HEADERS))
            return
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        if self.document is not None:  # the same for the process's life: built once
            await send(_json_start(200, self.document))
            await send({"type": "http.response.body", "body": self.document})
            return
        start: MutableMapping[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                body = self.document = json.dumps(complete(json.loads(body))).encode()
            await send(_json_start(start.get("status", 500), body))
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with required bodies, bearer security, the extra answers, and
    optional fields said in OpenAPI 3.0's words (``nullable``), as the version it declares."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
    }
    _as_openapi_30(spec)
    for path, operations in spec.get("paths", {}).items():
        if path in PUBLIC:
            continue
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["security"] = [{"bearer": []}]
            if "requestBody" in operation:  # but a body with no field (POST /admin/reload)
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                operation["requestBody"]["required"] = body.get("properties") != {}
            for status, description in EXTRA_RESPONSES.items():
                operation["responses"].setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                    },
                )
    return spec


def _as_openapi_30(node: Any) -> None:
    """What Pydantic writes in OpenAPI 3.1's (JSON Schema's) words, in OpenAPI 3.0's,
    throughout ``node``: ``anyOf: [X, {"type": "null"}]`` as ``X`` with ``nullable: true``
    (on each typed choice: 3.0 reads ``nullable`` only beside a ``type``), and a schema's
    ``examples`` list as its first ``example``."""
    if isinstance(node, list):
        for item in node:
            _as_openapi_30(item)
        return
    if not isinstance(node, dict):
        return
    choices = node.get("anyOf")
    if isinstance(choices, list) and {"type": "null"} in choices:
        kept = [c if "$ref" in c else {**c, "nullable": True} for c in choices
                if c != {"type": "null"}]  # fmt: skip
        del node["anyOf"]
        if len(kept) == 1 and "$ref" not in kept[0]:
            node.update(kept[0])
        else:  # several choices, or a $ref (which takes no sibling keys in 3.0)
            node.update(anyOf=kept, nullable=True)
    if isinstance(node.get("examples"), list):  # (a media type's examples are a mapping)
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    for value in node.values():
        _as_openapi_30(value)
