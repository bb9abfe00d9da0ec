"""One line of an OpenSSH allowed-signers file: what it says, and how it is read.

`AllowedSigner` holds a usable line (principal patterns, key, namespaces, validity) and matches against
it; `parse_line` reads one line as OpenSSH's parse_principals_key_and_options does, raising `LineError`
saying why a line cannot be used. It must not verify signatures nor look at more than one line.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from .keys import KEY_TYPES, SshPublicKey
from .wire import WireError, WireReader

_WHITESPACE = " \t\r\n"
# Key types OpenSSH knows but this module does not verify: a line with one is a problem, not "bad options".
_KNOWN_UNSUPPORTED = ("ssh-dss",)


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def match_list(value: str, patterns: tuple[str, ...]) -> bool:
    """OpenSSH's `match_pattern_list`: some pattern matches `value` and no `!`-negated one does.

    Patterns use `*` (any run) and `?` (any one character), case-sensitively.
    """
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern(pattern[1:] if negated else pattern).fullmatch(value):
            if negated:
                return False
            positive = True
    return positive


@dataclass(frozen=True)
class AllowedSigner:
    """One usable line of an allowed-signers file."""

    line: int
    principals: tuple[str, ...]
    """The principals as written: comma-separated patterns (`*`, `?`, `!` to negate)."""
    key: SshPublicKey
    namespaces: tuple[str, ...] | None = None
    """`namespaces="..."` patterns; None: every namespace."""
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    cert_authority: bool = False
    """A `cert-authority` line: trusts certificates, which this module does not verify (never matches)."""

    def admits(self, principal: str) -> bool:
        """Whether the line's principal patterns accept `principal` (as `ssh-keygen -Y verify -I`)."""
        return match_list(principal, self.principals)

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or match_list(namespace, self.namespaces)

    def valid_at(self, at: datetime) -> bool:
        when = int(at.timestamp())
        if self.valid_after is not None and when < int(self.valid_after.timestamp()):
            return False
        return self.valid_before is None or when <= int(self.valid_before.timestamp())

    @property
    def listed(self) -> tuple[str, ...]:
        """The principals `ssh-keygen -Y find-principals` prints for this line (up to an empty one)."""
        listed: list[str] = []
        for principal in self.principals:
            if not principal:
                break
            listed.append(principal)
        return tuple(listed)

    @property
    def identity(self) -> str | None:
        """The first principal of the line that names somebody (not negated, and admitted by the line)."""
        return next((p for p in self.listed if not p.startswith("!") and self.admits(p)), None)


# --- parsing one line (as OpenSSH's parse_principals_key_and_options) --------------------------------


class LineError(Exception):
    """Why one allowed-signers line cannot be used."""


def parse_line(raw: bytes, number: int) -> AllowedSigner | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError("the line is not UTF-8") from exc
    rest = text.lstrip(_WHITESPACE)
    if not rest or rest.startswith("#"):
        return None
    principals, rest = _principals(rest)
    first = rest.split(None, 1)[0] if rest.strip() else ""
    options = ""
    if not _is_key_type(first):
        options, rest = _options_text(rest)
        rest = rest.lstrip(" \t")
        if not rest.strip():
            raise LineError("missing key (expected `principals [options] keytype base64-key`)")
    key = _key(rest)
    namespaces, after, before, authority = _options(options)
    return AllowedSigner(number, tuple(principals.split(",")), key, namespaces, after, before, authority)


def _principals(text: str) -> tuple[str, str]:
    """The principals field (which may be quoted) and the rest of the line, as OpenSSH's `strdelimw`."""
    found = re.search(r'[ \t\r\n"]', text)
    if found is None:
        raise LineError("invalid line: principals but no key")
    at = found.start()
    if text[at] != '"':
        return text[:at], text[at + 1 :].lstrip(_WHITESPACE)
    unquoted = text[:at] + text[at + 1 :]
    close = unquoted.find('"', at)
    if close < 0:
        raise LineError("invalid line: no closing quote after the principals")
    return unquoted[:close], unquoted[close + 1 :].lstrip(_WHITESPACE)


def _is_key_type(token: str) -> bool:
    return token in KEY_TYPES or token in _KNOWN_UNSUPPORTED or token.endswith("-cert-v01@openssh.com")


def _options_text(text: str) -> tuple[str, str]:
    """Split the options from the key: up to the first space or tab outside quotes."""
    quoted = False
    at = 0
    while at < len(text) and (quoted or text[at] not in " \t"):
        if text[at] == "\\" and text[at + 1 : at + 2] == '"':
            at += 1
        elif text[at] == '"':
            quoted = not quoted
        at += 1
    if quoted:
        raise LineError("invalid options: no closing quote")
    return text[:at], text[at:]


def _key(text: str) -> SshPublicKey:
    fields = text.split()
    if len(fields) < 2:
        raise LineError("invalid key: expected `keytype base64-key`")
    key_type, encoded = fields[0], fields[1]
    if not _is_key_type(key_type):
        raise LineError(f"invalid key: unknown key type {key_type}")
    if key_type not in KEY_TYPES:
        raise LineError(f"key type {key_type} is not supported (supported: {', '.join(KEY_TYPES)})")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LineError("invalid key: not base64") from exc
    try:
        inner = WireReader(blob).text()
    except WireError as exc:
        raise LineError("invalid key: not an SSH public key") from exc
    if inner != key_type:
        raise LineError(f"invalid key: a {inner} key written as {key_type}")
    try:
        return SshPublicKey.from_blob(blob)
    except ValueError as exc:
        raise LineError(f"invalid key: {exc}") from exc


def _options(text: str) -> tuple[tuple[str, ...] | None, datetime | None, datetime | None, bool]:
    """`cert-authority`, `namespaces=`, `valid-after=`, `valid-before=` (OpenSSH's sshsigopt_parse)."""
    namespaces: tuple[str, ...] | None = None
    after: datetime | None = None
    before: datetime | None = None
    authority = False
    at = 0
    while at < len(text) and text[at] not in " \t":
        lower = text[at:].lower()
        if lower.startswith("cert-authority"):
            authority = True
            at += len("cert-authority")
        elif lower.startswith("namespaces="):
            if namespaces is not None:
                raise LineError('bad options: multiple "namespaces" clauses')
            value, at = _dequote(text, at + len("namespaces="))
            namespaces = tuple(value.split(","))
        elif lower.startswith(("valid-after=", "valid-before=")):
            name = "valid-after" if lower.startswith("valid-after=") else "valid-before"
            if (after if name == "valid-after" else before) is not None:
                raise LineError(f'bad options: multiple "{name}" clauses')
            value, at = _dequote(text, at + len(name) + 1)
            try:
                when = _absolute_time(value)
            except ValueError as exc:
                raise LineError(
                    f'bad options: invalid "{name}" time {value!r} (YYYYMMDD[HHMM[SS]][Z])'
                ) from exc
            if name == "valid-after":
                after = when
            else:
                before = when
        if at >= len(text) or text[at] in " \t":
            break
        if text[at] != ",":
            raise LineError(f"bad options: unknown key option at {text[at:]!r}")
        at += 1
        if at >= len(text):
            raise LineError("bad options: unexpected end of options")
    if after is not None and before is not None and before <= after:
        raise LineError('bad options: "valid-before" time is before "valid-after"')
    return namespaces, after, before, authority


def _dequote(text: str, at: int) -> tuple[str, int]:
    """A double-quoted option value starting at `at` (`\\"` stands for a quote) and where it ends."""
    if text[at : at + 1] != '"':
        raise LineError("bad options: missing start quote")
    value: list[str] = []
    at += 1
    while at < len(text) and text[at] != '"':
        if text[at] == "\\" and text[at + 1 : at + 2] == '"':
            at += 1
        value.append(text[at])
        at += 1
    if at >= len(text):
        raise LineError("bad options: missing end quote")
    return "".join(value), at + 1


def _absolute_time(value: str) -> datetime:
    """`YYYYMMDD[HHMM[SS]]`, then `Z` or `UTC` for UTC, else local time (OpenSSH's parse_absolute_time)."""
    utc = False
    digits = value
    if len(digits) > 1 and digits[-1] in "zZ":
        utc, digits = True, digits[:-1]
    elif len(digits) > 3 and digits[-3:].upper() == "UTC":
        utc, digits = True, digits[:-3]
    if len(digits) not in (8, 12, 14) or not (digits.isascii() and digits.isdigit()):
        raise ValueError(value)
    hour, minute, second = (int(digits[i : i + 2] or 0) for i in (8, 10, 12))
    when = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), hour, minute, second)
    return when.replace(tzinfo=UTC) if utc else when.astimezone()
