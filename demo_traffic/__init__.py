"""Demo traffic: replays the original project's 9 AM / 2 PM / 6 PM story against the real API."""
