"""HTTP decisions that need no server: path normalization, client IP, forwarding headers."""
