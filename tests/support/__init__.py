"""Helpers the tests and the benchmark share: provider fakes, API client, processes, broker."""
