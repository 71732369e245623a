"""Backends from database URLs, as ``cpcsync serve --db URL`` takes them.

- ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (SQLAlchemy's
  spelling: three slashes, then the path) -> :class:`SqliteBackend`; the path is taken
  as written (no percent-decoding); ``sqlite:///:memory:`` is a private in-memory
  database.
- ``postgresql://...`` and ``postgres://...`` -> ``PostgresBackend(url)``, imported only
  then: it needs ``cpcsync[postgres]`` (psycopg).
"""

from __future__ import annotations

import importlib
import re
import urllib.parse

from cpcsync.server.backend import Backend
from cpcsync.server.sqlite_backend import SqliteBackend

__all__ = ["backend_from_url", "redact_url"]

_PASSWORD_PARAM = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)
_SQLITE_HINT = "sqlite:///relative/path.db or sqlite:////absolute/path.db"


def backend_from_url(url: str) -> Backend:
    """A new backend for ``url`` (see the module docstring); the caller closes it.

    ValueError for a URL that names no supported database; ImportError when PostgreSQL
    support is not installed; BackendUnavailable when the database cannot be opened."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a database URL: {url!r} (use {_SQLITE_HINT}, or postgresql://...)")
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise ValueError(f"a sqlite URL has no host: use {_SQLITE_HINT}")
        path = rest[1:]
        if not path:
            raise ValueError(f"the sqlite URL names no file: use {_SQLITE_HINT}")
        if "?" in path or "#" in path:
            raise ValueError(f"a sqlite URL takes no query string or fragment: use {_SQLITE_HINT}")
        return SqliteBackend(path)
    if scheme in ("postgresql", "postgres"):
        try:
            module = importlib.import_module("cpcsync.server.postgres_backend")
            postgres_backend = module.PostgresBackend
        except (ImportError, AttributeError) as e:
            raise ImportError(
                f"PostgreSQL support needs cpcsync[postgres] (pip install 'cpcsync[postgres]'): {e}"
            ) from e
        backend: Backend = postgres_backend(url)
        return backend
    raise ValueError(
        f"unsupported database URL scheme {scheme!r}: use {_SQLITE_HINT}, or postgresql://..."
    )


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@``, or a ``password=`` parameter)
    replaced by ``***``: safe to print or log."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a database URL that cannot be parsed>"
    out = url
    if password:
        host = parts.netloc.rpartition("@")[2]
        out = out.replace(parts.netloc, f"{parts.username or ''}:***@{host}", 1)
    if parts.query:
        out = out.replace(f"?{parts.query}", "?" + _PASSWORD_PARAM.sub(r"\1***", parts.query), 1)
    return out
