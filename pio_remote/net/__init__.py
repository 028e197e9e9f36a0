"""The trio shell around ``wire``: WebSockets, the relay link, secure channels, tunnels."""
