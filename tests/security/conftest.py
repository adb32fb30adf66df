"""The GPU server over a real sshd and the worker threads, shared with the worker tests."""

from tests.workers.conftest import discovered_gpus as discovered_gpus
from tests.workers.conftest import gpu_server as gpu_server
from tests.workers.conftest import workers as workers
