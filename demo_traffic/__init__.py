"""Demo traffic: replays the seed's 9 AM / 2 PM / 6 PM story against the real API."""
