"""A reverse-proxy security gateway driven by YAML policy files."""

__version__ = "0.1.0"

# The TCP peer a described request (`gateway explain`, policy test cases) comes from unless it
# names one: a documentation address, "some client on the internet". Here, not in explain.py,
# so the command line can show it without importing the policy machinery.
DEFAULT_PEER = "192.0.2.10"
