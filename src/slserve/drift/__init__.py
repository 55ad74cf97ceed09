"""Drift: whether what a model version sees and says now differs from what it saw at build (or at a moment an
operator pinned), per version, from cheap streaming statistics.

`profile`: the statistics of a set of requests (mergeable, serializable) and the scores comparing two;
`monitor`: sliding windows per model version in the gateway, references, thresholds, warnings.
"""
