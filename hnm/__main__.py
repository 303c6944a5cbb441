"""Lets `python -m hnm <stage>` work, which is how the Snakemake rules call every stage."""

from hnm.cli import main

raise SystemExit(main())
