"""Metering: usage records from running time and tokens, rolled up into a bill."""
