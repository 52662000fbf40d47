"""System tests: the whole lifecycle with every component as a real process on loopback (issue 21)."""
