"""A small Python client of a node's local HTTP API.

    from p2psynth import Client

    client = Client.from_node_config("mynode/node.toml")
    frame = client.sample(rows=1000, where={"income": [">50K"]}, seed=7)
    client.sample_to_file("rows.parquet", rows=1_000_000)

Errors of the daemon reach the caller as ``ClientError`` with the daemon's
message and the HTTP status; a daemon that is not running is a
``ClientError`` that says so.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

from p2psynth.errors import P2PSynthError

DEFAULT_TIMEOUT_S = 60.0


class ClientError(P2PSynthError):
    """The daemon rejected a request or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class Client:
    """Talks to one node's API with its bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            trust_env=False,  # never route a loopback API through a proxy from the environment
        )

    @classmethod
    def from_node_config(cls, config_path: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Client":
        """Build a client from a node's node.toml: its API address and token file.

        When the daemon listens on an ephemeral port (0 in node.toml), the port
        is read from the daemon's status file.
        """
        from p2psynth.api import read_token
        from p2psynth.nodeconfig import load_node_config

        config = load_node_config(Path(config_path))
        port = config.api.port
        if port == 0:
            from p2psynth.daemon import read_status

            status = read_status(config.path)
            if not status.get("running"):
                raise ClientError(
                    f"the daemon of {config.path} is not running (pid {status.get('pid')} has stopped); "
                    f"start it with 'p2psynth node run --config {config.path}'"
                )
            port = (status.get("api") or {}).get("port") or 0
            if not port:
                raise ClientError(
                    f"the daemon of {config.path} has not reported its API port yet; "
                    "wait until it has started, then try again"
                )
        host = config.api.host
        host = f"[{host}]" if ":" in host else host
        return cls(f"http://{host}:{port}", read_token(config.api.token_file), timeout_s=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Endpoints -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/v1/status").json()

    def budget(self) -> dict[str, Any]:
        return self._request("GET", "/v1/budget").json()

    def model(self) -> dict[str, Any]:
        return self._request("GET", "/v1/model").json()

    def publish(self, *, epsilon: float | None = None) -> dict[str, Any]:
        body = {} if epsilon is None else {"epsilon": epsilon}
        return self._request("POST", "/v1/publish", json=body).json()

    def set_blocked(self, public_keys: Sequence[bytes | str]) -> list[str]:
        """Block exchange with these member keys (empty: unblock all); return the blocked keys."""
        keys = [k.hex() if isinstance(k, bytes) else k for k in public_keys]
        return self._request("PUT", "/v1/peers/blocked", json={"public_keys": keys}).json()["blocked"]

    def sample_bytes(
        self,
        *,
        rows: int,
        where: Mapping[str, Sequence[str]] | None = None,
        seed: int | None = None,
        format: str = "csv",
    ) -> bytes:
        body = {"rows": rows, "format": format, "where": {k: list(v) for k, v in (where or {}).items()}}
        if seed is not None:
            body["seed"] = seed
        return self._request("POST", "/v1/sample", json=body).content

    def sample(self, *, rows: int, where: Mapping[str, Sequence[str]] | None = None, seed: int | None = None):
        """Return synthetic rows as a pandas DataFrame."""
        import pandas as pd

        data = self.sample_bytes(rows=rows, where=where, seed=seed, format="parquet")
        return pd.read_parquet(io.BytesIO(data))

    def sample_to_file(
        self,
        path: str | Path,
        *,
        rows: int,
        where: Mapping[str, Sequence[str]] | None = None,
        seed: int | None = None,
        format: str | None = None,
    ) -> Path:
        """Stream synthetic rows into ``path``; the format follows the suffix unless given."""
        from p2psynth.synthesize import format_from_path

        path = Path(path)
        fmt = format_from_path(path, format)
        body = {"rows": rows, "format": fmt, "where": {k: list(v) for k, v in (where or {}).items()}}
        if seed is not None:
            body["seed"] = seed
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rows go to a hidden file first, so a response cut short never leaves a truncated ``path``.
        partial = path.with_name(f".{path.name}.partial")
        try:
            with self._client.stream("POST", "/v1/sample", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                with open(partial, "wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            os.replace(partial, path)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, f"; nothing was written to {path}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return path

    # Plumbing --------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _transport_error(self, exc: httpx.TransportError, consequence: str = "") -> ClientError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return ClientError(
                f"cannot reach the node API at {self.base_url} ({exc}); is the daemon running? "
                "Start it with 'p2psynth node run --config node.toml'"
            )
        # Connected, but the response failed or was cut short: the daemon's log has the reason.
        return ClientError(
            f"the request to the node API at {self.base_url} failed after it was sent "
            f"({type(exc).__name__}: {exc}){consequence}; see the daemon's log, then try again"
        )


def _error_from(response: httpx.Response) -> ClientError:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI validation errors: name the parameter
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', [])[1:]) or 'request'}: {item.get('msg')}" for item in detail
        )
    return ClientError(f"node API returned {response.status_code}: {detail}", status_code=response.status_code)
