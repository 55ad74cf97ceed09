"""Fixtures shared by the integration tests."""

from tests.integration.aws import moto_endpoint  # noqa: F401  (a session fixture: moto's server)
