"""The native forward pass: C compiled at load, called through ctypes (README.md here)."""
