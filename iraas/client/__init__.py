"""A typed client of the HTTP API: `from iraas.client import Client` (docs/integrating.md)."""

from .api import Client, IraasError, Recognition

__all__ = ["Client", "IraasError", "Recognition"]
