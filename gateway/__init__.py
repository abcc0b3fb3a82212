"""A reverse-proxy security gateway driven by YAML policy files."""

__version__ = "0.1.0"
