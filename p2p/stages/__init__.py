"""Stages: the cached, keyed steps the flows and the CLI compose."""
