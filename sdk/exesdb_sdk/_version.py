"""The package version, read by the build backend and reported by the broker."""

__version__ = "0.1.0"
