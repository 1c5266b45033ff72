"""The inventory: models (single source of truth), loader with file:line:col findings, checks."""

from llamafleet.config.loader import (
    InventoryError,
    LoadedInventory,
    check_inventory,
    default_inventory_path,
    load_inventory,
    load_inventory_with_warnings,
)
from llamafleet.config.models import Inventory

__all__ = ["Inventory", "InventoryError", "LoadedInventory", "check_inventory",
           "default_inventory_path", "load_inventory", "load_inventory_with_warnings"]
