"""The router: a request's (model, version or alias, tier) to an ordered list of functions.

Not wired into the gateway yet (issue 4): today's gateway addresses functions by name.
"""

from slserve.router.config import RoutesConfig, Tier, load_routes
from slserve.router.table import Route, RouteTable

__all__ = ["Route", "RouteTable", "RoutesConfig", "Tier", "load_routes"]
