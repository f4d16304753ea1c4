"""Credentials out of every URL that reaches a log, an error, a manifest or an artifact.

``redact_url(text)`` rewrites each URL inside ``text``: its userinfo (``scheme://user:password@`` and a
token alone, ``scheme://token@``) becomes ``***@``, and the value of each query parameter whose name looks like a
secret (``key``, ``api_key``, ``token``, ``secret``, ``password``, ``sig``, ``signature``, ``X-Amz-Signature``,
``X-Amz-Credential``, ...) becomes ``***``. Text without such a URL comes back unchanged.

A password must be percent-encoded where a URL needs it (``/``, ``?``, ``#``, whitespace); an unencoded ``@`` in
it is still caught (the userinfo ends at the authority's last ``@``).
"""

import logging
import re

MASK = "***"

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s\"'<>`]*)")
_USERINFO = re.compile(r"^[^/?#]*@")
"""The userinfo of an authority: everything up to its last ``@`` (a password may hold an unencoded ``@``)."""
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[^=&;#]*(?:key|token|secret|passw|pwd|signature|credential|auth)[^=&;#]*|sig))="
    r"(?P<value>[^&;#]*)",
    re.IGNORECASE,
)


def _redact_one(match: re.Match[str]) -> str:
    rest = _USERINFO.sub(MASK + "@", match["rest"], count=1)
    rest = _SECRET_PARAM.sub(lambda m: f"{m['name']}={MASK}" if m["value"] else m[0], rest)
    return match["scheme"] + rest


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***`` (see the module docstring)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_one, text)


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries something ``redact_url`` would hide."""
    return redact_url(url) != url


def _redacted_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: its handler reports it as it would have
        return record
    redacted = redact_url(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    return record


def install_log_redaction() -> None:
    """Redact URL credentials in every log record of this process, whichever logger or handler it goes to (the
    HTTP client's request lines, the SDK's retry lines, ours). Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_urls", False):
        return

    def make(*args: object, **kwargs: object) -> logging.LogRecord:
        return _redacted_record(factory(*args, **kwargs))

    make.redacts_urls = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)
