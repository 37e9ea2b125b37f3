"""Failure alerts beyond one callback: stable alert identities, the durable outbox, the deployment-wide listener."""
