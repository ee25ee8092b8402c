"""SnackBase: a self-hosted Backend-as-a-Service in one executable."""

__version__ = "0.1.0"
API_VERSION = "1"
