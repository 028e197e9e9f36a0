"""Several relay nodes sharing one PostgreSQL: accounts, presence and node liveness."""
