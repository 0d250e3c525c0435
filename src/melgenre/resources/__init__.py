"""Data files shipped with melgenre (split lists)."""
