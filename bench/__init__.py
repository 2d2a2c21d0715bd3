"""Mailman's benchmark: ``python -m bench`` (see ``bench/__main__.py``).

Every figure is measured side by side with a reference in the same run and
reported as a ratio, so the figures hold on a noisy 2-core machine. The
service, the fake providers, the reference app and the load generator each run
in their own process on loopback.
"""
