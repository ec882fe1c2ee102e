"""What keeps the process healthy and talking to its host: logging, the garbage
collector's policy, the memory trim, systemd's notify protocol."""
