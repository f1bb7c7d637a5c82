"""Decode -> guidance -> restore -> encode engine."""
