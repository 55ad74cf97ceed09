"""Feature tables: vectors of numbers stored by entity key, so a caller may send an id instead of its features.

`FeatureStore` is the seam (SQLite here, in the state folder; a key-value store such as DynamoDB elsewhere);
`CachedFeatures` keeps recent rows in memory for a bounded time; `load` fills a table from Parquet or CSV.
"""

from slserve.features.store import CachedFeatures, FeatureStore, SQLiteFeatureStore, TableInfo

__all__ = ["CachedFeatures", "FeatureStore", "SQLiteFeatureStore", "TableInfo"]
