from django.apps import AppConfig


class ConductorConfig(AppConfig):
    name = "conductor"
    verbose_name = "Conductor"

    def ready(self) -> None:
        # Registers the config system check, and declares the conductor actor so every
        # process (web, workers, commands) can route messages to its queue.
        from conductor import actors, checks  # noqa: F401
