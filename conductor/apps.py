from django.apps import AppConfig


class ConductorConfig(AppConfig):
    name = "conductor"
    verbose_name = "Conductor"

    def ready(self) -> None:
        from conductor import checks  # noqa: F401  (registers the config system check)
