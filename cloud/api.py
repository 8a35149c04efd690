"""The directory's HTTP API (FastAPI). Devices talk to it; operators use the CLI on the database.

    POST /v1/enrol                     {token, public_key} -> 201 {device_id, space_id} | 403
    GET  /v1/orgs/{org_id}/profile     signed (hal/directory/signing.py) -> 200 wire profile | 401 | 403
    POST /v1/cards/lookup              signed, {"card": "card-<hex>"} -> 200 {"org_id"} | 401 | 403 | 422
    POST /v1/device/certificate        signed, {"csr_pem"} -> 200 {"certificate_pem", "ca_pem", "not_after"}
                                       | 401 | 403 (CSR not P-256 or its signature bad) | 422 | 429
    POST /v1/device/sessions/end       signed, {"org_id": "<org>" | null} -> 200 {"ended"} | 401 | 422 | 429: the
                                       device's session ended (cloud/sessions.py)
    POST /v1/orgs/{org_id}/duplicate-sa  signed by the org's gateway (org/gateway_report.py), {device_id,
                                       remote_host, at} -> 201 | 401 | 422 | 429 (cloud/gateway_reports.py)
    GET  /v1/spaces/{space_id}/ca.pem  public: the space's device CA (PEM) | 404
    GET  /v1/spaces/{space_id}/crl     public: its CRL (DER, nextUpdate within the hour) | 404
    GET  /v1/health                    -> 200 {"status": "ok"}
    GET  /openapi.json, /docs, /redoc  only with `[server] api_docs = true` (cloud/config.py), else 404

Answers to devices are fixed: 401 `{"error": "unauthenticated"}`, 403 `{"error": "refused"}`,
413 `{"error": "too-large"}`, 422 `{"error": "malformed"}` (the request is never echoed back),
429 `{"error": "rate-limited"}` with `Retry-After` (cloud/ratelimit.py), 503 `{"error":
"unavailable"}` when the database is (or a profile's sealed part does not open). The application is
stateless but for its rate limits' buckets: any number of processes can serve one database.
Certificates: cloud/device_ca.py (per device at most `CERT_PER_HOUR` an hour, burst `CERT_BURST`).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud import config as cloud_config
from cloud.config import CloudConfig
from cloud.crypto import CryptoError, Keyring
from cloud.device_ca import CERT_BURST, CERT_PER_HOUR, DeviceCA, UnknownSpace
from cloud.gateway_reports import GatewayReports
from cloud.sessions import DeviceSessions, parse_end
from cloud.lookup import DeviceDirectory, Refused, Unauthenticated
from cloud.ratelimit import DeviceThrottle, RateLimited, RateLimits, TokenBuckets, retry_after, source_key
from cloud.storage import open_engine
from hal.directory import CARD_ID_RE
from hal.directory.signing import H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP
from org.gateway_report import DUPLICATE_PATH

log = logging.getLogger("tenantprint.cloud")
MAX_BODY = 16 * 1024
CERT_PATH, SPACES_PATH = "/v1/device/certificate", "/v1/spaces/"


class EnrolRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256)
    public_key: str = Field(min_length=1, max_length=128, description="base64 raw Ed25519 public key (32 bytes), or a P-256 "
                                                                       "uncompressed point (65 bytes: a key in a TPM)")


class EnrolResponse(BaseModel):
    device_id: str
    space_id: str


class CardLookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    card: str = Field(pattern=CARD_ID_RE.pattern, max_length=45,
                      description="a card known only by its UID: card-<UID in lowercase hex, or wedge digits>")


class CardLookupResponse(BaseModel):
    org_id: str


class ErrorResponse(BaseModel):
    error: str


SESSIONS_END_PATH = "/v1/device/sessions/end"
DUPLICATE_SUFFIX = DUPLICATE_PATH.removeprefix("/v1/orgs/{org}")  # "/duplicate-sa"
SIGNATURE_HEADERS = [{"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
                     for h in (H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE)]


def _parse_card(body: bytes) -> str | None:
    """The card id of a card lookup's body, or None when the body is anything but exactly
    `{"card": "<valid card id>"}`."""
    try:
        card = CardLookupRequest.model_validate_json(body).card
    except ValidationError:
        return None
    return card if CARD_ID_RE.fullmatch(card) else None


def _signed_path(request: Request) -> str:
    """The path (with query) as the device signed it: the raw request target."""
    path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    if request.scope.get("query_string"):
        path += "?" + request.scope["query_string"].decode("latin-1")
    return path


def _err(status: int, error: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _too_many(wait_s: float) -> JSONResponse:
    return _err(429, "rate-limited", {"Retry-After": retry_after(wait_s)})


def _log_refusal(what: str, exc: Unauthenticated) -> None:
    # A refusal that proved no device is counted in the database (cloud/refusals.py); a line each
    # in the journal would be the flood the counters avoid.
    if exc.device_id is not None:
        log.warning("%s of device %s unauthenticated (%s)", what, exc.device_id, exc.reason)
    else:
        log.debug("%s unauthenticated (%s)", what, exc.reason)


def _host(scope_or_request) -> str | None:
    client = scope_or_request.get("client") if isinstance(scope_or_request, dict) else scope_or_request.client
    return client[0] if client else None


class SourceLimit:
    """Turns requests away by source address before anything else is done with them (the body is
    not read): lookups and card lookups in one bucket per address, enrolment in another. Each
    refusal is counted (cloud/refusals.py), never audited."""

    def __init__(self, app, limits: RateLimits, directory: DeviceDirectory):
        self.app, self.limits, self.directory = app, limits, directory

    def _for_path(self, path: str):
        # certificate requests and the public CA/CRL share the lookups' bucket per address
        if path == CERT_PATH:
            return "certificate", self.limits.source
        if path.startswith(SPACES_PATH):
            return "device-ca", self.limits.source
        if path == SESSIONS_END_PATH:
            return "session-end", self.limits.source
        if path.startswith("/v1/orgs/") and path.endswith(DUPLICATE_SUFFIX):
            return "gateway-report", self.limits.source
        return self.limits.for_path(path)

    async def __call__(self, scope, receive, send):
        limited = self._for_path(scope.get("path", "")) if scope["type"] == "http" else None
        if limited is not None:
            action, buckets = limited
            host = _host(scope)
            wait = buckets.take(source_key(host))
            if wait > 0:
                if self.directory.refusals.note(action, "rate-limited", host):
                    await to_thread.run_sync(self.directory.refusals.flush)
                return await _too_many(wait)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Reads at most MAX_BODY bytes of a request body (whatever Content-Length says), else 413."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    return await _err(413, "too-large")(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _err(413, "too-large")(scope, receive, send)
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(engine: Engine, keyring: Keyring, *, window_s: int = 60, config: CloudConfig | None = None,
               cert_limit: TokenBuckets | None = None) -> FastAPI:
    """The API on `engine`; `config` (cloud/config.py; default: the defaults) sets the rate limits
    and whether the API docs are served; `cert_limit`: each device's certificate requests
    (default `CERT_PER_HOUR` an hour, burst `CERT_BURST`)."""
    config = config or CloudConfig()
    limits = RateLimits(config.limits)
    directory = DeviceDirectory(engine, keyring, window_s=window_s, device_limit=limits.device)
    cas = DeviceCA(engine, keyring)
    reports = GatewayReports(engine, window_s=window_s)
    sessions = DeviceSessions(engine)
    cert_limit = cert_limit or TokenBuckets(CERT_PER_HOUR / 60.0, CERT_BURST)
    cert_throttle = DeviceThrottle(engine, cert_limit, directory.count_refusal)
    limiter: list[CapacityLimiter] = []

    def db_threads() -> CapacityLimiter:
        # SQLite has one writer: one thread per process does the lookups (more threads only queued
        # on the write lock and fought over the GIL). PostgreSQL: as many as pooled connections.
        if not limiter:
            limiter.append(CapacityLimiter(1 if engine.dialect.name == "sqlite" else engine.pool.size()))
        return limiter[0]

    @asynccontextmanager
    async def lifespan(_app):
        async def flush_now_and_then() -> None:
            # the last refusals of a burst are written within a second too, not at the next refusal
            while True:
                await anyio.sleep(directory.refusals.flush_s)
                if directory.refusals.pending():
                    await to_thread.run_sync(directory.refusals.flush)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(flush_now_and_then)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        await to_thread.run_sync(directory.refusals.flush)  # the last second's counts

    docs = config.server.api_docs
    app = FastAPI(title="tenantprint org directory", version="1",
                  description="Session profiles for enrolled MFPs of spaces with a contract.",
                  openapi_url="/openapi.json" if docs else None, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, lifespan=lifespan)
    app.state.directory, app.state.limits = directory, limits
    app.state.device_ca, app.state.cert_limit = cas, cert_limit

    @app.exception_handler(RequestValidationError)
    async def _malformed(request, exc):
        return _err(422, "malformed")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return _err(exc.status_code, {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "error"))

    @app.exception_handler(OperationalError)
    async def _db_down(request, exc):
        log.error("database unavailable: %s", type(exc.orig).__name__ if exc.orig else "OperationalError")
        return _err(503, "unavailable")

    @app.exception_handler(CryptoError)
    async def _crypto(request, exc):
        log.error("profile does not decrypt: %s", exc)  # messages carry key ids, never material
        return _err(503, "unavailable")

    @app.get("/v1/health", responses={200: {"content": {"application/json": {}}}})
    async def health():
        return {"status": "ok"}

    @app.post("/v1/enrol", status_code=201, response_model=EnrolResponse,
              responses={403: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                         429: {"model": ErrorResponse}})
    async def enrol(req: EnrolRequest, request: Request):
        try:
            done = await to_thread.run_sync(directory.enrol, req.token, req.public_key, _host(request))
        except Refused as exc:
            (log.warning if exc.reason == "token" else log.debug)("enrolment refused (%s)", exc.reason)
            return _err(403, "refused")
        log.info("device %s enrolled into space %s", done.device_id, done.space_id)
        return EnrolResponse(device_id=done.device_id, space_id=done.space_id)

    @app.get("/v1/orgs/{org_id}/profile",
             responses={200: {"description": "the org's session profile (hal/directory/profile.py wire format)",
                              "content": {"application/json": {}}},
                        401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
             openapi_extra={"parameters": SIGNATURE_HEADERS})
    async def profile(org_id: str, request: Request):
        # The signature headers are read by `authenticate` from the request itself (documented
        # through `openapi_extra`): FastAPI's per-parameter header handling cost more than the lookup.
        body = await request.body()
        path, host = _signed_path(request), _host(request)

        def work() -> dict:
            try:
                device_id, nonce, key = directory.authenticate(request.headers, request.method, path, body)
                directory.throttle(device_id, "lookup", host)
                return directory.lookup(device_id, nonce, org_id, key, host)  # opens its session (cloud/sessions.py)
            except Unauthenticated as exc:
                directory.record_refusal("lookup", exc, host, org_id=org_id)
                raise

        try:
            wire = await to_thread.run_sync(work, limiter=db_threads())
        except Unauthenticated as exc:
            _log_refusal("lookup", exc)
            return _err(401, "unauthenticated")
        except Refused:
            return _err(403, "refused")
        except RateLimited as exc:
            return _too_many(exc.retry_after_s)
        return Response(json.dumps(wire).encode(), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @app.post("/v1/cards/lookup", response_model=CardLookupResponse,
              responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                         413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
              openapi_extra={"parameters": SIGNATURE_HEADERS, "requestBody": {"required": True, "content": {
                  "application/json": {"schema": CardLookupRequest.model_json_schema()}}}})
    async def card_lookup(request: Request):
        """The org a card known only by its UID is registered to in the device's space. The body is
        parsed only once the signature (which covers it) is verified; an unknown card and a card of
        an org without a contract with the space get the same 403."""
        body = await request.body()
        path, host = _signed_path(request), _host(request)

        def work() -> str | None:
            try:
                device_id, nonce, key = directory.authenticate(request.headers, request.method, path, body)
            except Unauthenticated as exc:
                directory.record_refusal("card-lookup", exc, host)
                raise
            directory.throttle(device_id, "card-lookup", host)
            card = _parse_card(body)
            if card is None:
                directory.record_refusal("card-lookup", Refused("malformed"), host, device_id)
                return None
            return directory.card_org(device_id, nonce, card, key, host)

        try:
            org_id = await to_thread.run_sync(work, limiter=db_threads())
        except Unauthenticated as exc:
            _log_refusal("card lookup", exc)
            return _err(401, "unauthenticated")
        except Refused:
            return _err(403, "refused")
        except RateLimited as exc:
            return _too_many(exc.retry_after_s)
        if org_id is None:
            return _err(422, "malformed")
        return JSONResponse({"org_id": org_id}, headers={"Cache-Control": "no-store"})

    @app.post(CERT_PATH, responses={200: {"content": {"application/json": {}}}, 401: {"model": ErrorResponse},
                                    403: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                                    422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
              openapi_extra={"parameters": SIGNATURE_HEADERS})
    async def device_certificate(request: Request):
        """A certificate of this device's space CA on the key of `csr_pem` (P-256, its signature
        valid; its subject ignored: the certificate names the signing device), valid 24 h."""
        body = await request.body()
        path, host = _signed_path(request), _host(request)

        def work():
            try:
                device_id, nonce, key = directory.authenticate(request.headers, request.method, path, body)
            except Unauthenticated as exc:
                directory.record_refusal("certificate", exc, host)
                raise
            cert_throttle.take(device_id, "certificate", host)
            try:
                issued = cas.request(device_id, nonce, key, body)
            except Unauthenticated as exc:
                if exc.reason == "replay":
                    cert_throttle.give_back(device_id, host)
                raise
            directory.sources.seen(device_id, host)
            return device_id, issued

        try:
            device_id, issued = await to_thread.run_sync(work, limiter=db_threads())
        except Unauthenticated as exc:
            _log_refusal("certificate request", exc)
            return _err(401, "unauthenticated")
        except Refused as exc:
            return _err(422, "malformed") if exc.reason == "malformed" else _err(403, "refused")
        except RateLimited as exc:
            return _too_many(exc.retry_after_s)
        log.info("certificate for device %s, valid until %d", device_id, issued.not_after)
        return JSONResponse(issued.answer(), headers={"Cache-Control": "no-store"})

    @app.post("/v1/orgs/{org_id}" + DUPLICATE_SUFFIX, status_code=201,
              responses={201: {"content": {"application/json": {}}}, 401: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})
    async def duplicate_sa(org_id: str, request: Request):
        """A duplicate IKE SA with a device's identity, reported by the org's gateway (signed with its
        certificate-mode key, org/gateway_report.py): audited as the device's anomaly."""
        body = await request.body()
        path, host = _signed_path(request), _host(request)

        def work() -> str:
            try:
                return reports.duplicate(org_id, request.headers, request.method, path, body, host)
            except Unauthenticated as exc:
                directory.count_refusal("gateway-report", exc.reason, host)
                raise

        try:
            device_id = await to_thread.run_sync(work, limiter=db_threads())
        except Unauthenticated as exc:
            _log_refusal("gateway report", exc)
            return _err(401, "unauthenticated")
        except Refused:
            return _err(422, "malformed")
        log.warning("org %s's gateway reports a duplicate IKE SA of device %s", org_id, device_id)
        return JSONResponse({"audited": True}, status_code=201, headers={"Cache-Control": "no-store"})

    @app.post(SESSIONS_END_PATH, responses={200: {"content": {"application/json": {}}}, 401: {"model": ErrorResponse},
                                            422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
              openapi_extra={"parameters": SIGNATURE_HEADERS})
    async def sessions_end(request: Request):
        """The device's session with `org_id` ended (`null`: every session, at the daemon's start)."""
        body = await request.body()
        path, host = _signed_path(request), _host(request)

        def work() -> int:
            try:
                device_id, nonce, key = directory.authenticate(request.headers, request.method, path, body)
                return sessions.ended(device_id, nonce, key, parse_end(body))
            except Unauthenticated as exc:
                directory.record_refusal("session-end", exc, host)
                raise

        try:
            ended = await to_thread.run_sync(work, limiter=db_threads())
        except Unauthenticated as exc:
            _log_refusal("session end", exc)
            return _err(401, "unauthenticated")
        except Refused:
            return _err(422, "malformed")
        return JSONResponse({"ended": ended}, headers={"Cache-Control": "no-store"})

    async def _space_object(space_id: str, make, media_type: str, max_age: int) -> Response:
        try:
            content = await to_thread.run_sync(make, space_id, limiter=db_threads())
        except UnknownSpace:
            return _err(404, "not-found")
        return Response(content, media_type=media_type, headers={"Cache-Control": f"public, max-age={max_age}"})

    @app.get(SPACES_PATH + "{space_id}/ca.pem", responses={200: {"content": {"application/x-pem-file": {}}},
                                                          404: {"model": ErrorResponse}})
    async def space_ca(space_id: str):
        """The space's device CA certificate (public: orgs' gateways trust it for this space's devices)."""
        return await _space_object(space_id, lambda s: cas.ca_pem(s).encode(), "application/x-pem-file", 3600)

    @app.get(SPACES_PATH + "{space_id}/crl", responses={200: {"content": {"application/pkix-crl": {}}},
                                                       404: {"model": ErrorResponse}})
    async def space_crl(space_id: str):
        """The space's CRL (DER; public, cacheable for 5 minutes, nextUpdate within the hour)."""
        return await _space_object(space_id, cas.crl, "application/pkix-crl", 300)

    app.add_middleware(BodyLimit)
    app.add_middleware(SourceLimit, limits=limits, directory=directory)  # added last: runs first
    return app


def app_from_env():
    """uvicorn factory for `tenantprint cloud serve` workers (settings in the environment)."""
    logging.basicConfig(level=os.environ.get("TP_CLOUD_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = open_engine(os.environ.get("TP_CLOUD_DB"), pool_size=int(os.environ.get("TP_CLOUD_POOL", "8")))
    kek = os.environ.get("TP_CLOUD_KEK_FILE")
    if not kek:
        raise SystemExit("TP_CLOUD_KEK_FILE is not set")
    config = cloud_config.load(cloud_config.config_path())  # `serve` checked it before the workers start
    return create_app(engine, Keyring(Path(kek)), window_s=int(os.environ.get("TP_CLOUD_WINDOW_S", "60")),
                      config=config)
