"""Errors of the feature-store layer; each has a stable machine-readable ``code``."""


class FeatureStoreError(Exception):
    """Base class of feature-store errors."""

    code = "feature_store_error"


class StoreNotApplied(FeatureStoreError):
    """The domain's Feast registry has not been applied yet."""

    code = "store_not_applied"


class UnsupportedOnlineStore(FeatureStoreError):
    """The configured online store URL names a backend privmesh does not support."""

    code = "unsupported_online_store"


class NoOfflineHistory(FeatureStoreError):
    """Historical features were asked for before any offline history was written."""

    code = "no_offline_history"


class UnreadableValue(FeatureStoreError):
    """An online value of a type the Feast-free reader does not decode (a list, a map)."""

    code = "unreadable_online_value"
