"""One small exception hierarchy, mapped to HTTP status codes in one place (vault.api).

Messages are shown to API users as they are, so they must never hold a value, a key or a body.
"""


class VaultError(Exception):
    """Base of every error the vault reports on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(VaultError):
    status = 400


class Unauthorized(VaultError):
    status = 401


class Forbidden(VaultError):
    status = 403


class NotFound(VaultError):
    status = 404


class Conflict(VaultError):
    status = 409


class TooLarge(VaultError):
    status = 413


class Unavailable(VaultError):
    """The database cannot be reached, or the vault is sealed."""

    status = 503


class Sealed(Unavailable):
    pass


class WrongKey(VaultError):
    """The master key does not open this vault (the key check value differs)."""


class Tampered(VaultError):
    """A stored ciphertext failed authentication: it was altered, swapped between rows, or the key is wrong."""


class RateLimited(VaultError):
    """Too many attempts: the message says when to try again (never whose identity)."""

    status = 429
