"""On the PYTHONPATH of a daemon a test starts: its system clock counts as not NTP-synchronised.

The clock-step tests are about a unit whose wall clock is not known to be
right (a Pi has no RTC; before NTP it starts at the last shutdown's time, then
steps): what the kernel of the machine running the tests says about its own
synchronisation must not decide which case is tested.
"""

try:
    import agent.clock as _clock

    _clock._adjtimex = lambda: False
except ImportError:  # not the agent's process
    pass
