"""The host agent: discover, report, keep the report current."""
