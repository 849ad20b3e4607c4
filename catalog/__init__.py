"""Governance catalog of data products, tags, lineage and budget use; built in its own issue."""
