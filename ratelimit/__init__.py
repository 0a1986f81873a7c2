"""The gateway's global rate-limit service: request limits and token quotas per API key that
hold across every gateway, kept in Redis (see README.md)."""
