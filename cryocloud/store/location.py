"""Where data live: URLs (local paths, ``file://``, ``s3://``) resolved to fsspec filesystems and zarr stores.

Every path cryocloud accepts is a URL. ``s3://bucket/key`` takes credentials from the usual AWS
sources (environment, ~/.aws, instance roles). A custom endpoint (MinIO, Ceph, moto) comes from
``storage_options={"endpoint_url": ...}`` (or ``{"client_kwargs": {"endpoint_url": ...}}``) or
from the environment variables ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Public buckets
(the CryoET Data Portal) are read with ``storage_options={"anon": True}``.

S3 filesystems are created with ``skip_instance_cache=True`` (a cached s3fs instance is bound to
one event loop) and with request checksums only where required (botocore >= 1.36 sends CRC32
checksums that some S3-compatible servers reject).
"""

from __future__ import annotations

import copy
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import fsspec

from cryocloud.errors import CryocloudError, StoreError
from cryocloud.store.guard import refuse_protected

# one GET per chunk object: s3fs's concurrent ranged download (max_concurrency > 1) costs a HEAD
# request per object to learn its size, and chunks are far smaller than its block size
_S3_DEFAULTS = {"max_concurrency": 1}
# the CryoET Data Portal's public bucket (cryocloud.store.portal reads it anonymously)
PORTAL_BUCKET = "cryoet-data-portal-public"
# public data read in place and never written
READ_ONLY_BUCKETS = frozenset({PORTAL_BUCKET})
# Retries: botocore retries each request on 500/502/503/504, throttling (SlowDown), timeouts and
# dropped connections ("standard" mode: up to `total_max_attempts` attempts, exponential backoff with
# jitter, at most 20 s a wait); s3fs wraps each call once more (S3FS_RETRIES attempts), which also
# covers a body cut off while it is read. A fault that outlasts them surfaces as a StoreError.
# Override with storage_options={"config_kwargs": {"retries": {...}, "read_timeout": ...}}.
S3_RETRIES = {"mode": "standard", "total_max_attempts": 4}
S3FS_RETRIES = 3
_S3_CONFIG_DEFAULTS = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "retries": S3_RETRIES,
    "connect_timeout": 10,
    "read_timeout": 60,
}


def _s3_options(storage_options: dict | None) -> dict:
    """s3fs keyword arguments: user options + endpoint from env + safe defaults."""
    opts = {**_S3_DEFAULTS, **(storage_options or {})}
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    endpoint = opts.pop("endpoint_url", None) or client_kwargs.get("endpoint_url")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    config_kwargs = copy.deepcopy(_S3_CONFIG_DEFAULTS)  # botocore rewrites the retries dict in place
    config_kwargs.update(copy.deepcopy(opts.pop("config_kwargs", None) or {}))
    opts["config_kwargs"] = config_kwargs
    opts["skip_instance_cache"] = True
    return opts


@dataclass(frozen=True)
class Location:
    """A resolved URL: ``protocol`` ("file" or "s3"), ``path`` (absolute local path or "bucket/key")
    and the fsspec ``storage_options`` to reach it."""

    protocol: str
    path: str
    storage_options: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def url(self) -> str:
        """Canonical URL: an absolute local path, or ``s3://bucket/key``."""
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *parts: str) -> "Location":
        """The location of relative key(s) under this one; StoreError for a key that is absolute or
        climbs out with `..` (a name from user data or a listing must never escape the prefix)."""
        for part in parts:
            text = str(part)
            segments = text.replace("\\", "/").split("/")
            if text.startswith(("/", "\\")) or ".." in segments:
                raise StoreError(self.url, f"key {text!r} must be a relative path inside this prefix (no '..', not absolute)", field="key")
        return Location(self.protocol, posixpath.join(self.path, *parts), self.storage_options)

    def require_writable(self) -> None:
        """StoreError unless writes may go here: never with anonymous access, never into a public
        read-only bucket (the CryoET Data Portal's), never onto, inside or over an input of the running
        command (`cryocloud.store.guard`). Every write path calls it before it creates, replaces or deletes."""
        if self.storage_options.get("anon"):
            raise StoreError(self.url, "anonymous access is read-only: public data are never written; write with credentials to your own location", field="anon")
        if self.protocol == "s3" and self.path.split("/", 1)[0] in READ_ONLY_BUCKETS:
            raise StoreError(self.url, "is a public read-only bucket (CryoET Data Portal); write results to your own bucket", field="url")
        refuse_protected(self)

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """A fresh fsspec filesystem for this location (asynchronous for S3)."""
        if self.is_local:
            return fsspec.filesystem("file")
        if self.protocol == "s3":
            return self._s3_filesystem(asynchronous=False)
        return fsspec.filesystem(self.protocol, **self.storage_options)

    def _s3_filesystem(self, *, asynchronous: bool) -> fsspec.AbstractFileSystem:
        fs = fsspec.filesystem("s3", asynchronous=asynchronous, **_s3_options(self.storage_options))
        fs.retries = S3FS_RETRIES  # s3fs's own attempts per call, on top of botocore's (see S3_RETRIES)
        return fs

    def zarr_store(self, *, read_only: bool):
        """A zarr 3 store rooted at this location."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        if self.protocol == "s3":
            return FsspecStore(self._s3_filesystem(asynchronous=True), read_only=read_only, path=self.path)
        return FsspecStore.from_url(self.url, storage_options=dict(self.storage_options), read_only=read_only)

    def exists(self) -> bool:
        with os_errors_as_store_errors(self.url, "reached"):
            return self.filesystem().exists(self.path)

    def contains(self, other: "Location") -> bool:
        """True when `other` is this location or lies inside it."""
        if self.protocol != other.protocol:
            return False
        mine, theirs = self.path.rstrip("/"), other.path.rstrip("/")
        return theirs == mine or theirs.startswith(mine + "/")


def describe_os_error(exc: Exception) -> str:
    """What an OSError (or botocore error) from a filesystem or object store means for the user."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, NotADirectoryError):
        return f"a parent of it is a regular file, not a folder ({text})"
    if isinstance(exc, PermissionError):
        return f"permission denied ({text})"
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return f"the bucket does not exist ({text})"
    if isinstance(exc, FileNotFoundError):
        return f"does not exist ({text})"
    return f"{type(exc).__name__}: {text}"


def transport_errors() -> tuple[type[Exception], ...]:
    """Exceptions of a filesystem or object store that has failed (after its retries): OSError and
    botocore's own (a connection closed or timed out on every attempt surfaces as one of these)."""
    from botocore.exceptions import BotoCoreError

    return (OSError, BotoCoreError)


@contextmanager
def os_errors_as_store_errors(url: str, action: str) -> Iterator[None]:
    """Turn filesystem / object-store failures (not ours) into a StoreError naming `url`."""
    try:
        yield
    except CryocloudError:
        raise
    except transport_errors() as exc:
        raise StoreError(url, f"cannot be {action}: {describe_os_error(exc)}") from exc


def resolve(url: str | os.PathLike | Location, storage_options: dict | None = None) -> Location:
    """Resolve a URL or local path into a `Location`; raises StoreError for unsupported schemes."""
    if isinstance(url, Location):
        return url if storage_options is None else Location(url.protocol, url.path, dict(storage_options))
    text = os.fspath(url)
    if not text:
        raise StoreError("<empty>", "expected a local path, file:// or s3:// URL", field="url")
    protocol, sep, rest = text.partition("://")
    if not sep:
        return Location("file", str(Path(text).expanduser().resolve()), dict(storage_options or {}))
    protocol = protocol.lower()
    if protocol == "file":
        return Location("file", str(Path(rest).resolve()), dict(storage_options or {}))
    if protocol in ("s3", "s3a"):
        bucket_key = rest.strip("/")
        if not bucket_key:
            raise StoreError(text, "has no bucket name; expected s3://bucket/key", field="url")
        return Location("s3", bucket_key, dict(storage_options or {}))
    if protocol in ("gs", "gcs", "az", "abfs"):
        return Location(protocol, rest.strip("/"), dict(storage_options or {}))
    raise StoreError(text, f"unsupported URL scheme '{protocol}'; expected a local path, file:// or s3://", field="url")


def resolve_all(urls: Iterable[Any], storage_options: dict | None = None) -> list[Location]:
    """The locations of `urls` (strings, paths or Locations, nested lists flattened); None, empty strings and
    CryoET Data Portal URLs (``portal://``, read-only by construction) are skipped."""
    found = []
    for url in urls:
        if isinstance(url, (list, tuple)):
            found.extend(resolve_all(url, storage_options))
        elif url is not None and not (isinstance(url, str) and (not url or url.lower().startswith("portal://"))):
            found.append(resolve(url, storage_options))
    return found


def open_url(url: str | os.PathLike, mode: str = "rb", *, storage_options: dict | None = None) -> IO[Any]:
    """Open a (small) file at a URL; use as a context manager. Text modes decode UTF-8.

    Raises StoreError naming the URL when the file (or its bucket) does not exist.
    """
    loc = resolve(url, storage_options)
    if any(c in mode for c in "wax+"):
        loc.require_writable()
    fs = loc.filesystem()
    try:
        if "r" in mode and not fs.isfile(loc.path):
            raise StoreError(loc.url, "does not exist (or is not a file)")
        if "w" in mode and loc.is_local:
            Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
        return fs.open(loc.path, mode, **kwargs)
    except CryocloudError:
        raise
    except transport_errors() as exc:
        raise StoreError(loc.url, f"cannot be opened ({mode}): {describe_os_error(exc)}") from exc
    except ValueError as exc:
        raise StoreError(loc.url, f"cannot be opened ({mode}): {exc}") from exc
