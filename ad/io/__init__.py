"""Ground floor I/O helpers shared by every layer (imports nothing from ad but ad.errors / ad.values)."""
