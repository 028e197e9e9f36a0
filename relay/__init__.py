"""The blind relay: authenticates accounts and forwards opaque frames.

It never imports Noise or pyserial; it reads only the routing envelope.
"""
