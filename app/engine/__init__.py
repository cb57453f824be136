"""The batching engine and the forward work it runs."""
