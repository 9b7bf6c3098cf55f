"""The gateway daemon and the device engineer's CLI."""
