"""The router: a request's (model, version or alias, tier) to an ordered list of functions (`table`), the table
in force (`live`), the price of the work asked for (`pricing`); routes.toml parsed (`config`) and edited
(`edit`). It chooses; `serving` runs the choice (fallback, pipelines, shadows)."""

from slserve.router.config import RoutesConfig, Tier, load_routes
from slserve.router.table import Route, RouteTable

__all__ = ["Route", "RouteTable", "RoutesConfig", "Tier", "load_routes"]
