"""Command-line layer: parse, call one service, render. The only layer that prints."""
