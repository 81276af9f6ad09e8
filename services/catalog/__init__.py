"""The model catalog and API keys: one typed YAML file, validated at startup."""

from services.catalog.loader import CatalogError, load_catalog
from services.catalog.schema import Catalog, KeyEntry, Limits, ModelEntry

__all__ = ["Catalog", "CatalogError", "KeyEntry", "Limits", "ModelEntry", "load_catalog"]
