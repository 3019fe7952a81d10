"""CIAMS: central imaging archive and management system for multicenter trials."""

__version__ = "0.1.0"
