"""Helpers every wing may use: errors, atomic writes, device/precision choice, config and run directory."""
