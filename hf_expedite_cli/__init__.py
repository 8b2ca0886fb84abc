"""The command-line layer of hf_expedite's scripts: options, errors and exit codes.

Standard library only, and a package of its own because importing ``hf_expedite`` registers every model with
transformers (torch and transformers load first, seconds on a busy machine). The scripts build and parse their command
lines with this package alone, so ``--help`` and a bad option answer at once, before any heavy import.
"""
