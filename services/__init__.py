"""Aether's shared kit: the message contract, subjects, settings, errors, logging and bus helpers."""

__version__ = "0.1.0"
