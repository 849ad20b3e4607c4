"""Feast feature stores, one per domain, with definitions derived from the contracts."""
