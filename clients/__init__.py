"""Command-line client of the service (llm_cli.py, `llm-cli` once installed); examples/ holds
standalone scripts that use only tritonclient, to copy into your own code."""
