from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create an admin user with a random password if there is none, saving the password "
        "to MQI_DATA_DIR/admin-password.txt (readable by you only). For first runs and demos."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **opts) -> None:
        users = get_user_model().objects
        secret_file = settings.DATA_DIR / "admin-password.txt"
        if users.filter(username=username).exists():
            where = f"its password is in {secret_file}" if secret_file.exists() else "unchanged"
            self.stdout.write(f"admin user {username!r} exists; {where}")
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.touch(mode=0o600)
        secret_file.write_text(password + "\n")
        self.stdout.write(f"created admin user {username!r}; password saved in {secret_file}")
