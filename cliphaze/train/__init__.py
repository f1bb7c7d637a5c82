"""Training of CLIPHaze: datasets, synthetic haze, the two-stage loop and its click commands.

Nothing outside this package imports it except ``cli.py`` (which registers the commands).
"""
