"""Thin argparse front ends, one module per stage; the work happens in the modules they call."""
