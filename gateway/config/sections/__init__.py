"""Readers of the policy file's sections, each turning YAML nodes into settings objects through
the loader's Reader (which records FILE:LINE:COL problems)."""
