"""The chaos suite: a ledger workload run while workers and PostgreSQL are crashed."""
