"""conveyor as a standalone service: the HTTP API, metrics, dashboard and the ``conveyor`` CLI.

Needs the ``service`` extra (``pip install 'conveyor[service]'``).
"""

from ._app import Service
from ._cli import main
from ._demo import registry as demo_registry
from ._server import LoadError, Running, ServeOptions, load_registry, run, serve

__all__ = [
    "LoadError",
    "Running",
    "ServeOptions",
    "Service",
    "demo_registry",
    "load_registry",
    "main",
    "run",
    "serve",
]
