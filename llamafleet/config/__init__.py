"""The inventory: models (single source of truth), loader with file:line:col findings, checks."""

from llamafleet.config.findings import Finding, InventoryError, Severity
from llamafleet.config.loader import (
    LoadedInventory,
    check_inventory,
    default_inventory_path,
    load_inventory,
    load_inventory_with_warnings,
)
from llamafleet.config.models import Inventory

__all__ = ["Finding", "Inventory", "InventoryError", "LoadedInventory", "Severity", "check_inventory",
           "default_inventory_path", "load_inventory", "load_inventory_with_warnings"]
