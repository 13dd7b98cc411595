"""Activation: segments and their memberships, pushes to channels, the event log, webhooks and
the deliverer."""
