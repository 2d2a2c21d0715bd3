"""Mailman's actors: each one a lifecycle (``actors.lifecycle``) under a supervisor.

The senders (one per provider), the relay, the retry scheduler, the sweeper, the
status-callback notifier, the breakers' shared health, and the two listeners: the
HTTP server (serving ``mailman.routes``' app, handed to it by ``mailman.system``)
and SMTP submission. ``processes`` supervises whole processes for ``--processes``.
"""
