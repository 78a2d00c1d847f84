"""Hardware drivers: GNSS receiver (serial NMEA) and GPIO inputs and outputs."""
