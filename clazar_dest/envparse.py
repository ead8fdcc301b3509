"""Strict parsers for settings read from the environment.

Every parser raises ``ImproperlyConfigured`` with the variable's name and what was expected, so a typo
in a deployment fails at start-up instead of running with a silently different value.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value if value else None


def parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off."
    )


def parse_int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}.")
    return number


def parse_list(env: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    value = _raw(env, name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"{name}={value!r} has an empty item: separate values with single commas.")
    return items


def parse_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if value.upper() in choices:
        return value.upper()
    raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}.")


def parse_url(
    env: Mapping[str, str], name: str, *, schemes: tuple[str, ...], default: str | None = None
) -> str | None:
    value = _raw(env, name)
    if value is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ImproperlyConfigured(f"{name}={value!r} must be a URL starting with {' or '.join(schemes)}://")
    return value


def parse_database_url(env: Mapping[str, str], name: str = "DATABASE_URL") -> str | None:
    """postgres://user:pass@host:port/db, or sqlite:////absolute/path.sqlite3."""
    value = _raw(env, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme in ("postgres", "postgresql") and parts.hostname and parts.path.strip("/"):
        return value
    if parts.scheme == "sqlite" and not parts.netloc and parts.path.startswith("/") and len(parts.path) > 1:
        return value
    raise ImproperlyConfigured(
        f"{name} must look like postgres://user:password@host:5432/dbname or sqlite:////absolute/file.sqlite3"
    )


def parse_origin(value: str, name: str) -> str:
    """An origin like https://api.clazar.io (scheme, host, optional port; no path, query or userinfo)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(f"{name}: {value!r} must be an origin such as https://api.clazar.io")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ImproperlyConfigured(f"{name}: {value!r} must have no user, path, query or fragment.")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: {value!r} has an invalid port.") from None
    host = parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """Read NAME, or the file named by NAME_FILE (Docker secrets). Both set is an error."""
    direct = _raw(env, name)
    path = _raw(env, f"{name}_FILE")
    if direct and path:
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    if path:
        try:
            content = Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from None
        if not content:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} is empty.")
        return content
    return direct


def generated_secret(folder: Path, filename: str, make: object) -> str:
    """Return the secret stored in folder/filename, creating it (mode 0600) on first use."""
    path = folder / filename
    if path.exists():
        content = path.read_text().strip()
        if content:
            return content
    folder.mkdir(parents=True, exist_ok=True)
    value = make()  # type: ignore[operator]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def parse_fernet_keys(value: str, name: str) -> list[str]:
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise ImproperlyConfigured(f"{name} holds no key.")
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: key {index} is not a Fernet key (32 url-safe base64-encoded bytes)."
            ) from None
    return keys
