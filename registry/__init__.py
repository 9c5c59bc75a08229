"""prompt-registry: versioned prompts and model configs, experiments and completions."""

__version__ = "0.1.0"
