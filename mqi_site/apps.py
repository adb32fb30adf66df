from django.apps import AppConfig


class MqiSiteConfig(AppConfig):
    """The project itself, as an app so it can own the commands that run everything."""

    name = "mqi_site"
    verbose_name = "MQI Communicator"
