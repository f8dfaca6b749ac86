"""Stages (train, tune, generate, evaluate, run), configuration, tracking and the CLI."""
