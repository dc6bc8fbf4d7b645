"""hapair."""
