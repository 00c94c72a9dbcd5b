"""The observability tests use the endpoint tests' live server with the fixture model registered."""

from tests.endpoints.conftest import registry

__all__ = ["registry"]
