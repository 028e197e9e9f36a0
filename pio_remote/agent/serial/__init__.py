"""The agent's serial ports: which it offers, who holds each, and driving one from trio."""
