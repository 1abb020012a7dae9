"""The pure core of Apex: definitions, commands, events and the decider.

Nothing in this package does I/O, reads a clock or draws randomness.
"""
