from tests.harness import production  # noqa: F401  (the fixture)
