"""The `hfld` command line (entry point: pipeline.cli:main)."""

from pipeline.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
