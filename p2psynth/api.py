"""The local HTTP API of the daemon, for analysts and the ``p2psynth`` CLI.

FastAPI describes the endpoints (the OpenAPI schema is served at
``/openapi.json``) and Hypercorn's trio worker serves them inside the
daemon's own event loop, so handlers read the daemon's state directly.
Requests need ``Authorization: Bearer <token>`` with the token from the
node's ``api.token`` file (mode 0600); the comparison is constant-time.
The API listens on 127.0.0.1 unless node.toml sets another address.

Endpoints (all under ``/v1``): ``status``, ``budget``, ``model``,
``publish`` (POST) and ``sample`` (GET with query parameters, or POST with a
JSON body). Samples are drawn and encoded chunk by chunk in a worker thread
and streamed, so a large request neither blocks the event loop nor holds
every row in memory (Parquet excepted, see ``synthesize``).
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
from pathlib import Path
from typing import Any, Literal

import trio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from p2psynth.errors import BudgetExceededError, ConfigError, LedgerError, ModelError, P2PSynthError, RoundInProgressError
from p2psynth.synthesize import MAX_ROWS, conditions_from_values, encode_chunks, parse_where, sample_chunks

log = logging.getLogger(__name__)

MEDIA_TYPES = {"csv": "text/csv", "json": "application/json", "parquet": "application/vnd.apache.parquet"}


class PublishRequest(BaseModel):
    epsilon: float | None = Field(default=None, gt=0, description="epsilon of this release; default from node.toml")


class BlockedPeersRequest(BaseModel):
    public_keys: list[str] = Field(description="hex Ed25519 public keys of members to block; empty unblocks all")


class SampleRequest(BaseModel):
    rows: int = Field(ge=0, le=MAX_ROWS, description="number of synthetic rows")
    seed: int | None = Field(default=None, ge=0, description="seed for reproducible rows; random if omitted")
    format: Literal["csv", "json", "parquet"] = "csv"
    where: dict[str, list[str]] = Field(
        default_factory=dict, description="allowed values per column, e.g. {\"income\": [\">50K\"]}"
    )


def read_token(path: Path) -> str:
    """Read the API token; raise ConfigError if missing or readable by others."""
    import stat

    from p2psynth.errors import ConfigError

    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"API token file {path} not found; it is created by 'p2psynth init'") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"API token file {path} is readable by other users; run 'chmod 600 {path}'")
    if len(token) < 16:
        raise ConfigError(f"API token in {path} is shorter than 16 characters; write a long random token")
    return token


def create_app(daemon) -> FastAPI:
    """Build the FastAPI application bound to a running ``NodeDaemon``."""
    token = read_token(daemon.config.api.token_file)
    app = FastAPI(
        title="p2psynth node API",
        version="1",
        description="Local API of a p2psynth node: status, budget, publishing and synthetic rows.",
        docs_url=None,  # the interactive docs page loads scripts from a CDN
        redoc_url=None,
    )

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token; send 'Authorization: Bearer <token from api.token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(P2PSynthError)
    async def product_error(request: Request, exc: P2PSynthError) -> JSONResponse:
        return JSONResponse(status_code=_status_code(exc), content={"detail": str(exc)})

    @app.get("/v1/status", dependencies=[Depends(authorize)])
    async def status() -> dict[str, Any]:
        """Peers, releases, rejections, the model id and its provenance."""
        return _json_safe(daemon.status())

    @app.get("/v1/budget", dependencies=[Depends(authorize)])
    async def budget() -> dict[str, Any]:
        """Return the privacy budget spent and remaining."""
        return _json_safe(daemon.budget_view())

    @app.get("/v1/model", dependencies=[Depends(authorize)])
    async def model() -> dict[str, Any]:
        """Return the current model's id, provenance and estimated row count."""
        return _json_safe(daemon.model_view())

    @app.post("/v1/publish", dependencies=[Depends(authorize)], responses={409: {"description": "budget exhausted, or this node's measurement rounds still running"}})
    async def publish(request: PublishRequest | None = None) -> Any:
        """Measure the private table, debit the ledger and announce a release."""
        epsilon = request.epsilon if request is not None else None
        try:
            return await daemon.publish(epsilon=epsilon)
        except BudgetExceededError as exc:
            # The message states spent, remaining and requested epsilon; the
            # fields repeat them for programs.
            requested = epsilon if epsilon is not None else daemon.config.privacy.release_epsilon
            return JSONResponse(
                status_code=409,
                content={
                    "detail": str(exc),
                    "requested_epsilon": requested,
                    "budget": _json_safe(daemon.budget_view()),
                },
            )

    @app.put("/v1/peers/blocked", dependencies=[Depends(authorize)])
    async def set_blocked(request: BlockedPeersRequest) -> dict[str, Any]:
        """Refuse all exchange with these members (a partition); an empty list lifts it."""
        keys = set()
        for text in request.public_keys:
            try:
                key = bytes.fromhex(text)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise HTTPException(status_code=422, detail=f"public_keys: {text!r} is not 64 hex characters")
            keys.add(key)
        return {"blocked": await daemon.set_blocked(keys)}

    @app.get("/v1/sample", dependencies=[Depends(authorize)])
    async def sample_get(
        rows: int = Query(ge=0, le=MAX_ROWS, description="number of synthetic rows"),
        seed: int | None = Query(default=None, ge=0, description="seed for reproducible rows"),
        format: Literal["csv", "json", "parquet"] = Query(default="csv"),
        where: list[str] = Query(default=[], description="condition COL=VALUE or 'COL in {A, B}'; repeatable"),
    ) -> StreamingResponse:
        """Synthetic rows from the current model, streamed."""
        conditions = parse_where(daemon.schema, where)
        return _stream_sample(daemon, rows=rows, seed=seed, fmt=format, conditions=conditions)

    @app.post("/v1/sample", dependencies=[Depends(authorize)])
    async def sample_post(request: SampleRequest) -> StreamingResponse:
        """Synthetic rows from the current model, streamed; conditions as a JSON map."""
        conditions = conditions_from_values(daemon.schema, request.where)
        return _stream_sample(daemon, rows=request.rows, seed=request.seed, fmt=request.format, conditions=conditions)

    return app


def _stream_sample(daemon, *, rows: int, seed: int | None, fmt: str, conditions) -> StreamingResponse:
    model = daemon.models.state.model
    if model is None:
        reason = daemon.models.state.error or "no model fitted yet"
        raise ModelError(f"no model yet ({reason}); wait until releases have arrived and try again")
    if seed is None:
        import secrets

        seed = secrets.randbelow(2**63)

    # Fail before the response starts: conditions with probability zero, for example.
    first = model.sample(1, seed=seed, conditions=conditions or None) if rows else None
    del first

    iterator = encode_chunks(
        sample_chunks(model, daemon.schema, rows=rows, seed=seed, conditions=conditions), fmt
    )

    async def body():
        while True:
            chunk = await trio.to_thread.run_sync(next, iterator, None)
            if chunk is None:
                return
            yield chunk

    extension = {"csv": "csv", "json": "json", "parquet": "parquet"}[fmt]
    return StreamingResponse(
        body(),
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="synthetic.{extension}"',
            "X-P2psynth-Model-Id": model.model_id,
            "X-P2psynth-Seed": str(seed),
        },
    )


def _status_code(exc: P2PSynthError) -> int:
    if isinstance(exc, (BudgetExceededError, RoundInProgressError)):
        return 409
    if isinstance(exc, LedgerError):
        return 503
    if isinstance(exc, ModelError) and str(exc).startswith("no model yet"):
        return 503
    return 400


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _check_port_free(host: str, port: int, *, config_path) -> None:
    """Raise ConfigError naming the setting when another process listens on the API address."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"{config_path}: api.listen {host}:{port} cannot be used ({exc.strerror}); another node or "
                "program listens there. Give each node on this machine its own port in [api] listen "
                "('p2psynth init --api-port N' sets it)"
            ) from None


async def serve_api(daemon, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API until cancelled; ``task_status.started(port)`` once it listens."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    _check_port_free(daemon.config.api.host, daemon.config.api.port, config_path=daemon.config.path)
    app = create_app(daemon)
    config = Config()
    host = daemon.config.api.host
    config.bind = [f"[{host}]:{daemon.config.api.port}" if ":" in host else f"{host}:{daemon.config.api.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2psynth.api.server")
    config.graceful_timeout = 2.0

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        port = int(binds[0].rsplit(":", 1)[1]) if binds else daemon.config.api.port
        daemon.api_port = port
        log.info("API listening on http://%s:%d", host, port)
        task_status.started(port)
