"""The experiment runner (``editfriendly run``): Lightning lives here only."""
