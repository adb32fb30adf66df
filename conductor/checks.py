"""config.yaml problems surface as Django system checks (``manage.py check``, and at the
start of every server and worker), one error per offending key."""

from django.core import checks

from mqi_site.config import ConfigError, get_config


@checks.register("mqi")
def check_config(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    try:
        get_config()
    except ConfigError as exc:
        return [
            checks.Error(problem, hint=f"fix {exc.source}", id="mqi.E001")
            for problem in exc.problems
        ]
    return []
