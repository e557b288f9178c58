"""Platform-to-device commands (反控): the per-worker dispatcher and its pure helpers.

``dispatcher.CommandDispatcher`` sends queued ``hj212.command`` rows to the devices this
worker holds and records each exchange; ``flows`` says what each CN expects back;
``skew`` decides from real-time uploads when a device's clock needs setting.
"""

from gateway.commands.dispatcher import CommandDispatcher

__all__ = ["CommandDispatcher"]
