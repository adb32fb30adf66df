"""Small helpers that read settings from the environment.

Secrets may also come from files: for any variable ``NAME``, setting ``NAME_FILE`` to a path
reads the value from that file (the Docker/Kubernetes secrets convention).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str | None = None) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            # Name the variable, never the content: the file holds a secret.
            raise ImproperlyConfigured(
                f"{name}_FILE={file_path}: cannot read it ({exc.strerror or exc})"
            ) from None
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]
