"""Exception hierarchy of p2psynth.

Every error the product raises on purpose derives from ``P2PSynthError`` and
carries a message that names the bad value and says what to do::

    P2PSynthError
    ├── ConfigError          node.toml, members file or CLI arguments are invalid
    ├── SchemaError          schema TOML is invalid, or data does not fit the schema
    │   └── DataError        a data file cannot be read or encoded
    ├── IdentityError        node key file missing, unreadable or too permissive
    ├── PrivacyError         invalid privacy parameters (rho, epsilon, delta, sigma)
    ├── LedgerError          the budget ledger is missing, unreadable or inconsistent
    │   └── BudgetExceededError   a release would spend more than the lifetime budget
    ├── ReleaseFormatError   release bytes fail strict decoding or verification
    ├── StoreError           the node's SQLite store cannot be used
    ├── NetworkError         a network address, peer or message is invalid, or the network cannot start
    └── ModelError           a global model cannot be assembled or sampled

Errors from libraries (sqlite3, msgpack, cryptography, pandas) are translated
into these at the module boundary with ``raise ... from exc``.
"""


class P2PSynthError(Exception):
    """Base class of every error p2psynth raises on purpose."""


class ConfigError(P2PSynthError):
    """A configuration file or command-line argument is invalid."""


class SchemaError(P2PSynthError):
    """A schema is invalid, or data does not fit it."""


class DataError(SchemaError):
    """A data file cannot be read or encoded under the schema."""


class IdentityError(P2PSynthError):
    """The node's key file is missing, unreadable or readable by others."""


class PrivacyError(P2PSynthError):
    """Privacy parameters are out of range."""


class LedgerError(P2PSynthError):
    """The budget ledger is missing, unreadable or inconsistent: publishing stops."""


class BudgetExceededError(LedgerError):
    """A release would spend more privacy budget than remains."""


class ReleaseFormatError(P2PSynthError):
    """Release bytes fail strict decoding, size limits or signature verification."""


class StoreError(P2PSynthError):
    """The node's SQLite store cannot be opened or written."""


class NetworkError(P2PSynthError):
    """A network address, peer id or protocol message is invalid, or the network layer cannot start."""


class ModelError(P2PSynthError):
    """A global model cannot be assembled, loaded or sampled."""


class RoundInProgressError(P2PSynthError):
    """A publish was asked for while this node's measurement rounds of an epoch are still running."""
