"""The project's settings plus :class:`bench.worker_timeout.PingStamp`, first in line."""

from mqi_site.settings import *  # noqa: F403
from mqi_site.settings import DRAMATIQ_BROKER, DRAMATIQ_MIDDLEWARE

DRAMATIQ_MIDDLEWARE = ["bench.worker_timeout.PingStamp", *DRAMATIQ_MIDDLEWARE]
DRAMATIQ_BROKER = {**DRAMATIQ_BROKER, "MIDDLEWARE": DRAMATIQ_MIDDLEWARE}
