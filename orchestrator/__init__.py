"""xmem's driver side: sweep specs, the command line, and the Ray Tune adapter."""
