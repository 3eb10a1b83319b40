"""Telling the operator: the durable outbox, the delivery policy, the Telegram transport."""
