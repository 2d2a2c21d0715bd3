"""Mailman's actors, the mailboxes that join them, the store and the provider clients."""
