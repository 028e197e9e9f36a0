"""The remote serial monitor, client side: options, filters, keys, console, forwarding.

The agent side (opening and driving the real port) is ``pio_remote.agent.serial.monitor``.
"""
