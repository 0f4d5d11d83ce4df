"""Serving half of the kit: the FHE inference container, its wire contract and local runtime."""
