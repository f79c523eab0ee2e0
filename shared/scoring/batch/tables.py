"""Where a table lives: one spelling for users, the spelling each engine needs.

Every command that takes a Delta table (the batch job, ``has-data``, ``check``,
``report``, the rollout gates) accepts a local path, a ``file:`` URI, ``s3://bucket/key``
(``s3a://`` is read as the same thing) or, for Spark only, a catalog name. This module is
the one place that turns such a location into:

- its canonical form (:func:`normalize`), recorded in lineage, summaries and reports: a
  relative path becomes absolute (so it means the same thing to Spark, delta-rs and a
  scheduler's next task), ``s3a://`` becomes ``s3://``;
- what Spark's Hadoop filesystems want (:func:`for_spark`: ``s3a://``);
- what delta-rs wants (:func:`for_delta_rs`: ``s3://`` plus the endpoint options).

Credentials never pass through here: Spark (S3A) and delta-rs each read the standard AWS
environment and provider chain themselves, so no secret reaches a URI, a log line or a
table's metadata. A location that carries credentials in it is refused.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from scoring.errors import ConfigError, StorageAccessError
from scoring.settings import Settings, load

__all__ = [
    "access_problem",
    "for_delta_rs",
    "for_spark",
    "is_catalog_name",
    "normalize",
    "raise_for_access",
]

# Schemes S3 tables are written with; the canonical one comes first.
_S3 = ("s3", "s3a", "s3n")
_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_catalog_name(table: str) -> bool:
    """Whether ``table`` is a catalog name (``db.table``) rather than a location."""
    return "/" not in table and ":" not in table and not table.startswith(("~", "."))


def normalize(table: str) -> str:
    """The canonical spelling of ``table``: absolute path, ``s3://`` URI or catalog name.

    Raises:
        ConfigError: the location is empty, has credentials in it, or names no bucket.
    """
    text = table.strip()
    if not text:
        raise ConfigError("A table location is empty; give a path, an s3:// URI or a name.")
    if is_catalog_name(text):
        return text
    match = _SCHEME.match(text)
    # Absolute, but symlinks kept as the user wrote them (no filesystem access needed).
    if match is None:  # a plain path, relative to the current directory or not
        return os.path.abspath(os.path.expanduser(text))
    scheme = match["scheme"].lower()
    if scheme == "file":
        return os.path.abspath(urlsplit(text).path)
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise ConfigError(
            f"The table location for bucket/host {parts.hostname!r} has credentials in it; "
            "remove them. Credentials come from the AWS environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the provider chain, never from a "
            "URI that would be logged and recorded."
        )
    if scheme in _S3:
        if not parts.netloc:
            raise ConfigError(f"{text!r} names no bucket; write s3://BUCKET/path/to/table.")
        return f"s3://{parts.netloc}{parts.path.rstrip('/')}"
    return text.rstrip("/")


def for_spark(table: str) -> str:
    """``table`` as Spark's Hadoop filesystems read it (``s3://`` becomes ``s3a://``)."""
    canonical = normalize(table)
    if canonical.startswith("s3://"):
        return "s3a://" + canonical[len("s3://") :]
    return canonical


def for_delta_rs(table: str, settings: Settings | None = None) -> tuple[str, dict[str, str]]:
    """``table`` and the storage options delta-rs needs to reach it.

    Only the endpoint, the region and plain-HTTP permission are passed (what a custom
    endpoint needs); delta-rs takes the credentials from the AWS environment itself.
    """
    canonical = normalize(table)
    if not canonical.startswith("s3://"):
        return canonical, {}
    settings = settings or load()
    options: dict[str, str] = {}
    if settings.s3_endpoint:
        options["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.s3_region:
        options["AWS_REGION"] = settings.s3_region
    return canonical, options


# What S3 (and S3A, delta-rs, boto) say when the credentials are wrong or not allowed.
_ACCESS_CODES = (
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "NoAuthWithAWSException",
    "No AWS Credentials",
    "Unable to load credentials",
    "403 Forbidden",
    "Status Code: 403",
    "status code: 403",
    "(403)",
)


def access_problem(error: BaseException) -> str | None:
    """The S3 error code if ``error`` (or what caused it) is a refused credential.

    Only the code is returned, never the error text: a service's message can quote
    request details that do not belong in a log.
    """
    seen: BaseException | None = error
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}"
        for code in _ACCESS_CODES:
            if code in text:
                return code.strip("()").replace("Status Code: ", "HTTP ")
        seen = seen.__cause__ or seen.__context__
    return None


def raise_for_access(table: str, error: BaseException) -> None:
    """Raise :class:`StorageAccessError` if ``error`` is a refused credential for ``table``."""
    code = access_problem(error)
    if code is not None:
        raise StorageAccessError(normalize(table), code) from error
