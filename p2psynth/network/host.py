"""The libp2p host of a node: identity, Noise-only security, Yamux, dialing.

The node's Ed25519 key (the key that signs its releases) is also its libp2p
identity, so a peer id names a member: an Ed25519 peer id inlines the 32-byte
public key (identity multihash), and ``public_key_from_peer_id`` recovers it
without a lookup.

Security is Noise only. When ``sec_opt`` is missing *or empty*,
``libp2p.new_host`` 0.8.1 falls back to a default list that contains
plaintext and secio, and a default host accepted a plaintext-only peer. So
the options are built here and checked to contain exactly Noise. The muxer
is Yamux only: the default list adds mplex as a fallback, which moved raw
streams about 4 times slower on loopback.

Dialing goes through ``dial_with_backoff``: exponential backoff with jitter,
a bounded number of attempts, each under its own timeout. The swarm keeps a
60-second "negative cache" of peers whose every address failed, and it
rejects new dials to them without trying. Every retry here clears that entry
first, or the backoff would only ever see the cached failure.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import Ed25519PublicKey as Libp2pEd25519PublicKey
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2psynth.errors import NetworkError

logger = logging.getLogger(__name__)

DEFAULT_LISTEN_ADDRS = ("/ip4/127.0.0.1/tcp/0",)

# Time allowed for multistream-select on a new stream; the library default is 30 s.
NEGOTIATE_TIMEOUT_S = 10


def libp2p_key_pair(private_key: Ed25519PrivateKey) -> KeyPair:
    """Return the libp2p key pair of the node's Ed25519 key (same secret, same public key)."""
    seed = private_key.private_bytes_raw()
    key_pair = create_new_key_pair(seed)
    if key_pair.public_key.to_bytes() != private_key.public_key().public_bytes_raw():
        raise NetworkError("libp2p derived a different public key from the node key; check the libp2p version")
    return key_pair


def peer_id_from_public_key(public_key: bytes) -> ID:
    """Return the libp2p peer id of a 32-byte raw Ed25519 public key."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise NetworkError(f"an Ed25519 public key is 32 bytes, got {public_key!r:.80}")
    return ID.from_pubkey(Libp2pEd25519PublicKey.from_bytes(public_key))


def public_key_from_peer_id(peer_id: ID | str) -> bytes:
    """Return the 32-byte Ed25519 public key inlined in ``peer_id``.

    Raises NetworkError for a malformed id or one that does not inline an
    Ed25519 key (RSA and secp256k1 peer ids hash the key instead).
    """
    if isinstance(peer_id, str):
        try:
            peer_id = ID.from_base58(peer_id)
        except Exception as exc:  # base58 and multihash both raise their own types
            raise NetworkError(f"invalid peer id {peer_id!r}: {exc}") from exc
    try:
        public_key = peer_id.extract_public_key()
    except Exception as exc:
        raise NetworkError(f"failed to read a public key from peer id {peer_id}: {exc}") from exc
    if not isinstance(public_key, Libp2pEd25519PublicKey):
        raise NetworkError(
            f"peer id {peer_id} does not inline an Ed25519 public key; p2psynth peers use Ed25519 keys"
        )
    return public_key.to_bytes()


def security_options(key_pair: KeyPair) -> dict[TProtocol, NoiseTransport]:
    """Return the security transports of a p2psynth host: Noise (XX handshake) and nothing else."""
    options = {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    }
    check_security_options(options)
    return options


def check_security_options(options: dict) -> None:
    """Raise NetworkError unless ``options`` is exactly the Noise transport."""
    if list(options) != [NOISE_PROTOCOL_ID]:
        raise NetworkError(
            f"security options must be exactly [{NOISE_PROTOCOL_ID!r}], got {list(options)}; "
            "an empty dict would make libp2p fall back to plaintext and secio"
        )


def muxer_options() -> dict[TProtocol, type[Yamux]]:
    """Return the stream muxers of a p2psynth host: Yamux only."""
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


def create_host(private_key: Ed25519PrivateKey) -> IHost:
    """Create (but do not start) a libp2p host with the node's identity, Noise and Yamux.

    mDNS, UPnP, QUIC and libp2p's own bootstrap discovery stay off: peers are
    dialed explicitly with ``dial_with_backoff``. Start the host with
    ``async with host.run(listen_addrs=parse_multiaddrs(...))``.
    """
    key_pair = libp2p_key_pair(private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt=security_options(key_pair),
        muxer_opt=muxer_options(),
        enable_mDNS=False,
        enable_upnp=False,
        enable_quic=False,
        bootstrap=None,
        negotiate_timeout=NEGOTIATE_TIMEOUT_S,
    )
    check_security_options(dict(host.get_network().upgrader.security_multistream.transports))
    return host


def parse_multiaddrs(addresses: Iterable[str]) -> list[multiaddr.Multiaddr]:
    """Parse multiaddr strings; raise NetworkError naming the first invalid one."""
    parsed = []
    for address in addresses:
        try:
            parsed.append(multiaddr.Multiaddr(address))
        except Exception as exc:  # multiaddr raises several unrelated types
            raise NetworkError(
                f"invalid multiaddr {address!r}: {exc}; expected a form like /ip4/127.0.0.1/tcp/4001"
            ) from exc
    return parsed


def peer_info_from_address(address: str) -> PeerInfo:
    """Parse a dialable address ``/ip4/.../tcp/.../p2p/<peer id>`` into a PeerInfo.

    The ``/p2p/`` part is required, because Noise then checks that the peer
    listening at that address has the private key of that peer id.
    """
    (parsed,) = parse_multiaddrs([address])
    try:
        return info_from_p2p_addr(parsed)
    except Exception as exc:
        raise NetworkError(
            f"address {address!r} has no valid /p2p/<peer id> part ({exc}); "
            "copy the full address a node prints at start-up"
        ) from exc


def host_addresses(host: IHost) -> list[str]:
    """Return the host's listen addresses with its ``/p2p/<peer id>`` suffix."""
    return [str(address) for address in host.get_addrs()]


def backoff_delays_s(
    *, attempts: int, initial_delay_s: float, max_delay_s: float, rng: random.Random
) -> list[float]:
    """Return the waits before retries 2..attempts: doubling from ``initial_delay_s``, capped, with ±20 % jitter."""
    delays = []
    delay = initial_delay_s
    for _ in range(max(attempts - 1, 0)):
        delays.append(min(delay, max_delay_s) * rng.uniform(0.8, 1.2))
        delay *= 2
    return delays


async def dial_with_backoff(
    host: IHost,
    address: str,
    *,
    attempts: int = 6,
    initial_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    attempt_timeout_s: float = 10.0,
    rng: random.Random | None = None,
) -> ID:
    """Connect to ``address`` (with ``/p2p/<peer id>``); return the peer id once connected.

    Tries ``attempts`` times, waiting ``backoff_delays_s`` between tries, each
    try bounded by ``attempt_timeout_s``. Raises NetworkError naming the
    address and the last failure when every try fails, or at once for an
    unparsable address or our own peer id.
    """
    if attempts < 1:
        raise NetworkError(f"dial attempts must be at least 1, got {attempts}")
    info = peer_info_from_address(address)
    if info.peer_id == host.get_id():
        raise NetworkError(f"address {address!r} is this node's own address; remove it from the peer list")
    delays = backoff_delays_s(
        attempts=attempts, initial_delay_s=initial_delay_s, max_delay_s=max_delay_s, rng=rng or random.Random()
    )

    last_error = ""
    for attempt in range(1, attempts + 1):
        _forget_failed_dial(host, info.peer_id)
        last_error = f"timed out after {attempt_timeout_s} s"
        with trio.move_on_after(attempt_timeout_s):
            try:
                await host.connect(info)
                logger.debug("connected to peer %s at %s (attempt %d)", info.peer_id, address, attempt)
                return info.peer_id
            except Exception as exc:  # swarm and transport errors have no common base class
                last_error = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            delay_s = delays[attempt - 1]
            logger.debug(
                "dial %s failed (attempt %d of %d: %s); retrying in %.2f s",
                address, attempt, attempts, last_error, delay_s,
            )
            await trio.sleep(delay_s)

    raise NetworkError(f"cannot connect to {address} after {attempts} attempts; last error: {last_error}")


def _forget_failed_dial(host: IHost, peer_id: ID) -> None:
    network = host.get_network()
    unblock = getattr(network, "unblock_peer", None)
    if unblock is not None:
        unblock(peer_id)

