"""The REST API under ``/api/v1``: ``deps`` (caller, role, transaction, paging
parameters), ``errors`` (the one place an error becomes JSON), ``paging`` (the list
shape), ``routes`` (one router module per domain)."""
