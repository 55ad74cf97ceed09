"""The router: a request's (model, version or alias, tier) to an ordered list of functions (`table`), tried in
order with fallback and priced by the work asked for (`dispatch`, `pricing`); routes.toml parsed (`config`)
and edited (`edit`)."""

from slserve.router.config import RoutesConfig, Tier, load_routes
from slserve.router.table import Route, RouteTable

__all__ = ["Route", "RouteTable", "RoutesConfig", "Tier", "load_routes"]
