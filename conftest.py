# Fixtures shared by the whole suite that live in their own modules.
pytest_plugins = ["tests.sshd"]
