"""Applying a finished run's model to new, unlabelled slides (`snakemake predict`, rules/predict.smk)."""
