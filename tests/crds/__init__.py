"""Third-party CRDs as test data (NOTICE.md) and a validator that checks objects against them."""
