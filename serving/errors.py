"""Refusals by type: every error a route can give, its status code, and how it is answered.

One table (:data:`STATUS`) maps exception types to status codes; :func:`answers` wraps each API
so that a refusal is ``{"error": "<one sentence>"}`` with its code, logged at INFO in one line,
anything unexpected is a 500 logged with its traceback, and every answer leaves as ready JSON.
Every response carries the request's ``X-Request-ID`` (:class:`RequestIds`), and a 500's body
names it so that a client's report can be found in the log. Client text in a message is quoted
(``repr``/JSON), or, for a field name, shown only when it is a plain identifier.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from features.eventlog import EventStoreUnavailable, redact_urls
from features.stock import StockRefusal
from models.errors import BeyondModelError, UnknownIdError
from models.placement import PlacementError

log = logging.getLogger("omnichannel_ml")

REQUEST_ID = "x-request-id"
#: Seconds a client should wait before retrying a 503.
RETRY_AFTER = 5
DEBUG_ENV = "OMNI_DEBUG"


class ServiceError(Exception):
    """A refusal the service decides on; subclasses say which."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class NotFound(ServiceError):
    status = HTTPStatus.NOT_FOUND


class Unavailable(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class Unprocessable(ServiceError):
    """Well-formed, but naming what the service does not have where it must (e.g. a category)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


#: The status code of each kind of refusal (the most specific type listed wins).
STATUS: dict[type[Exception], HTTPStatus] = {
    UnknownIdError: HTTPStatus.NOT_FOUND,
    BeyondModelError: HTTPStatus.CONFLICT,
    PlacementError: HTTPStatus.UNPROCESSABLE_ENTITY,
    EventStoreUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
}


#: What clients are told when the event store fails; its address (user, host, database) and
#: the driver's words go to the log only.
STORE_DOWN = "The event store is unavailable (the service's log says why); retry later."


def public_message(exc: Exception) -> str:
    """What a refusal tells the client: the exception's sentence, except the event store's."""
    return STORE_DOWN if isinstance(exc, EventStoreUnavailable) else str(exc)


def status_of(exc: Exception) -> HTTPStatus | None:
    """The status code for ``exc``, or None when it is not a refusal (a bug: 500)."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, StockRefusal):
        return HTTPStatus(exc.status)
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return None


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def answers(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an API method (``(self, ctx, **request)``, plain or async): refusals and failures
    become answers."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def wrapper_async(self: Any, ctx: bentoml.Context, **request: Any) -> Any:
            try:
                return _as_json(await method(self, ctx, **request))
            except Exception as exc:
                return _as_json(_answer_for(ctx, exc))

        return wrapper_async

    @functools.wraps(method)
    def wrapper(self: Any, ctx: bentoml.Context, **request: Any) -> Any:
        try:
            return _as_json(method(self, ctx, **request))
        except Exception as exc:
            return _as_json(_answer_for(ctx, exc))

    return wrapper


def _as_json(answer: dict[str, Any]) -> Response | dict[str, Any]:
    """The answer as a ready JSON response. BentoML would build its answer type's JSON schema
    for every response (a tenth of a request's time); it still sets the status and headers
    from the context. What plain JSON cannot hold (NaN, numpy types) goes BentoML's way."""
    try:
        body = json.dumps(answer, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return answer
    return Response(body.encode(), media_type="application/json")


def _answer_for(ctx: bentoml.Context, exc: Exception) -> dict[str, Any]:
    """The refusal for ``exc``; anything unexpected (a 500) is logged here with its traceback
    and the request id (the others by :class:`RequestIds`)."""
    request_id = ctx.request.headers.get(REQUEST_ID, "-")
    status = status_of(exc)
    path = ctx.request.url.path
    if status is None or status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return refuse(ctx, HTTPStatus.INTERNAL_SERVER_ERROR, _internal(path, request_id, exc))
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        ctx.response.metadata["retry-after"] = str(RETRY_AFTER)
    return refuse(ctx, status, public_message(exc))  # logged by RequestIds, as every refusal


def _internal(path: str, request_id: str, exc: Exception) -> str:
    """A 500's message, its traceback logged with the request id."""
    log.error("%s failed (request %s)", path, request_id, exc_info=exc)
    message = f"Internal error (request {request_id}); it has been logged."
    return message + (f" {type(exc).__name__}: {exc}" if debug() else "")


def json_errors(
    route: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A mounted (non-API) route whose unexpected errors are answered as the API routes'
    are: a JSON 500 naming the request id, the traceback logged once, with it."""

    @functools.wraps(route)
    async def wrapper(request: Request) -> Response:
        try:
            return await route(request)
        except Exception as exc:
            message = _internal(request.url.path, request.headers.get(REQUEST_ID, "-"), exc)
            return JSONResponse({"error": redact_urls(message)}, status_code=500)

    return wrapper


def refuse(ctx: bentoml.Context, status: HTTPStatus, message: str) -> dict[str, Any]:
    """An answer as ``{"error": message}`` with ``status``."""
    ctx.response.status_code = status
    return {"error": redact_urls(message)}


# -- ASGI: request ids, and BentoML's own 400s as one-sentence 422s ------------------------------

Scope = MutableMapping[str, Any]
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIds:
    """ASGI middleware: every request gets an ``X-Request-ID`` (the client's, if it is a short
    token, else a new one), passed on to the routes and returned on the response.

    Request bodies BentoML refuses before a route runs (types, ranges, unknown fields) come back
    as 422 with one sentence naming every bad field, instead of BentoML's 400 list. Every
    refusal — any 4xx, from the key gate to a route's own, and a 503 — is logged in one line
    with its status, request id and sentence: INFO, a 503 at WARNING (see
    :class:`QuietRefusals`; a 500 is logged with its traceback where it happened).
    """

    def __init__(self, app: Any, routes: frozenset[str] | set[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID.encode(), b"").decode("latin-1")
        request_id = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        headers = [(k, v) for k, v in scope["headers"] if k != REQUEST_ID.encode()]
        scope = {**scope, "headers": [*headers, (REQUEST_ID.encode(), request_id.encode())]}
        rewrite = scope.get("path") in self.routes
        start: MutableMapping[str, Any] = {}
        chunks: list[bytes] = []
        held = False  # BentoML's 400 on a route, or routing's plain-text 404 or 405: rewritten
        refused = False  # a refusal passed on as it is: its sentence is logged at its end
        path = json.dumps(scope.get("path", ""))[1:-1]  # a client's %0A is not a new log line
        probe = scope.get("path") in PROBES  # a probe's 503 says "not ready", refusing no one

        async def reply(message: MutableMapping[str, Any]) -> None:
            nonlocal held, refused
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                start.update(message, headers=[*headers, (b"x-request-id", request_id.encode())])
                plain = dict(headers).get(b"content-type", b"").startswith(b"text/plain")
                status = message["status"]
                held = (rewrite and status == 400) or (status in (404, 405) and plain)
                refused = status >= 400 and status != 500 and not held and not probe
                if not held:
                    await send(start)
                return
            if not held:  # passed on as it is
                if refused:
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body"):
                        said = _said(b"".join(chunks))
                        _log_refusal(path, start["status"], request_id, said)
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            if start["status"] == 400:
                status, body = _as_refusal(b"".join(chunks), BATCHES.get(scope["path"]))
            else:
                status, body = start["status"], {"error": _no_route(scope, start["headers"])}
            _log_refusal(path, status, request_id, body["error"])
            encoded = json.dumps(body).encode()
            headers = [(k, v) for k, v in start["headers"]
                       if k.lower() not in (b"content-length", b"content-type")]  # fmt: skip
            headers += [(b"content-type", b"application/json"),
                        (b"content-length", str(len(encoded)).encode())]  # fmt: skip
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": encoded})

        await self.app(scope, receive, reply)


def _log_refusal(path: str, status: int, request_id: str, sentence: str) -> None:
    """One line for a refusal: its status, request id and sentence."""
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "%s refused %d (request %s): %s", path, status, request_id, sentence[:1000])


def _said(body: bytes) -> str:
    """A refusal's sentence: the answer's ``error``, else the start of its body."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    said = answer.get("error") if isinstance(answer, dict) else None
    return said if isinstance(said, str) else body[:200].decode("utf-8", "replace")


def _no_route(scope: Scope, headers: list[tuple[bytes, bytes]]) -> str:
    """Routing's 404 or 405 in a sentence (the client's path and method quoted)."""
    path, method = scope.get("path", ""), scope.get("method", "")
    allowed = dict(headers).get(b"allow")
    if allowed:
        return f"{path!r} takes {allowed.decode('latin-1')}, not {method!r}."
    return f"There is no route {method} {path!r}."


#: Health probes: their answers are states, not refusals.
PROBES = frozenset({"/livez", "/readyz", "/healthz"})
#: The routes that store a batch all or none, and the field that holds it.
BATCHES = {"/events": "events", "/movements": "movements"}


def _as_refusal(raw: bytes, batch: str | None = None) -> tuple[int, dict[str, Any]]:
    """BentoML's 400 body as (status, ``{"error": sentence}``): 422 for invalid fields; for a
    ``batch`` route, also ``stored`` 0 and ``rejected``, every bad row by index (as the
    contract's refusals are answered)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return 400, {"error": "The request body could not be read."}
    if isinstance(body, dict) and body.keys() == {"error"} and isinstance(body["error"], str):
        return 400, body  # already one sentence: the gate's (BentoML's own come in a list)
    if isinstance(body, list):  # BentoML answers some 4xx as a one-item list
        body = body[0] if body and isinstance(body[0], dict) else {}
    details = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(details, list) or not details:
        return 400, {"error": "The request body could not be read as this API's JSON."}
    if any(isinstance(d, dict) and d.get("type") == "json_invalid" for d in details):
        return 400, {"error": "The request body is not valid JSON."}
    details = [d for d in details if isinstance(d, dict)]
    rows = _bad_rows(details, batch) if batch else {}
    if batch and rows and all(_row_of(d, batch) is not None for d in details):  # else: general
        said = (
            f"{len(rows)} {batch} are refused for their types and none was stored (the contract's"
        )
        return 422, batch_refusal(said + " checks come after)", list(rows.items()))
    problems = [_problem(d) for d in details[:20]]
    more = f" (and {len(details) - 20} more)" if len(details) > 20 else ""
    return 422, {"error": "Invalid request: " + "; ".join(problems) + more + "."}


def batch_refusal(said: str, bad: list[tuple[int, str]]) -> dict[str, Any]:
    """The 422 of a batch stored all or none: ``said``, then the first 20 bad rows by index
    with their reasons, and every one in ``rejected``."""
    listed = "; ".join(f"[{i}] {reason}" for i, reason in bad[:20])
    more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    return {
        "error": f"{said}: {listed}{more}.",
        "stored": 0,
        "rejected": [{"index": i, "reason": reason} for i, reason in bad],
    }


def _bad_rows(details: list[dict[str, Any]], batch: str) -> dict[int, str]:
    """Per row of a batch its problems, one per field (``quantity: Input should be a valid
    number``: of a number-or-integer field, the first member's word), in row order."""
    fields: dict[int, dict[str, str]] = {}
    for detail in details:
        row = _row_of(detail, batch)
        if row is not None:
            field = detail["loc"][2:3]
            problem = _problem({**detail, "loc": field}) if field else str(detail.get("msg"))
            fields.setdefault(row, {}).setdefault(str(field), problem)
    return {i: "; ".join(fields[i].values()) for i in sorted(fields)}


def _row_of(detail: dict[str, Any], batch: str | None) -> int | None:
    """The row of the batch a problem is in (``loc`` events, 3, ...), or None."""
    loc = detail.get("loc", [])
    return loc[1] if len(loc) >= 2 and loc[0] == batch and isinstance(loc[1], int) else None


def _problem(detail: dict[str, Any]) -> str:
    """``events[3].quantity: Input should be a valid number`` — names quoted as JSON strings
    when they are not plain identifiers (a client's unknown field name is its own text)."""
    where = ""
    for part in detail.get("loc", []):
        if isinstance(part, int):
            where += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", str(part)):
            where += f".{part}" if where else str(part)
        else:
            where += f"[{json.dumps(str(part)[:64])}]"
    message = str(detail.get("msg", "is invalid")).rstrip(".")
    if detail.get("type") == "string_pattern_mismatch":  # the ids' pattern: not said as a regex
        message = "holds a character an id may not (a control or invisible one; in a stock id "
        message += "also a space at either end)"
    return f"{where or 'body'}: {message}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with its control characters written out (``\\n``, ``\\x1b``): a client's
    ``%0A`` in a path or a field makes no log line of its own, and no terminal escape."""
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)


class OneLine(logging.Filter):
    """Every record in one line: BentoML's access log writes the decoded path as the client
    sent it (``/x%0A2026-... [ERROR] ...`` forged a line of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = one_line(message), ()
        return True


class QuietRefusals(logging.Filter):
    """BentoML logs every body it refuses as an ERROR with a traceback; a refusal is the
    client's mistake, not ours, and :class:`RequestIds` logs it in one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = getattr(getattr(exc, "error_code", None), "value", None)
        return not (type(exc).__name__ == "ValidationError" or (status and status < 500))
