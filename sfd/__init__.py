"""sfd: a self-hosted marketplace order hub."""

__version__ = "0.1.0"
