"""Adapters that put NAC models into other frameworks' pipelines (`nac.integrations.ray`)."""
