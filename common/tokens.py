"""Reading the secrets the programs are given: the cluster token, the admin token."""

from __future__ import annotations

from pathlib import Path

# A cluster token shorter than this draws a warning: any stranger's Hello gets a proof
# to test guesses of it against offline (docs/security.md). What random tokens are made
# with passes (16 random bytes: 24 characters of base64, 32 of hex; a UUID 36); a word,
# a date or a short passphrase does not.
STRONG_TOKEN = 24


def read_token(value: str | None, file: Path | None, what: str = "a cluster token") -> bytes | None:
    """A token (`what`: which) from a flag's value or a file; ValueError if unusable."""
    if file is not None:
        try:
            value = file.read_text().strip()
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"cannot read the token file {file}: {exc}") from exc
    if value is None:
        return None
    if len(value) < 8:
        raise ValueError(f"{what} must be at least 8 characters")
    return value.encode()
