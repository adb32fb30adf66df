"""Production settings plus :class:`tests.faults.duplicate_delivery.DeliverTwice`."""

from mqi_site.settings import *  # noqa: F403
from mqi_site.settings import DRAMATIQ_BROKER, DRAMATIQ_MIDDLEWARE

DRAMATIQ_MIDDLEWARE = [*DRAMATIQ_MIDDLEWARE, "tests.faults.duplicate_delivery.DeliverTwice"]
DRAMATIQ_BROKER = {**DRAMATIQ_BROKER, "MIDDLEWARE": DRAMATIQ_MIDDLEWARE}
