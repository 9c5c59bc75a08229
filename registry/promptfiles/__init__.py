"""Prompts as code: prompt files in a folder, synced to the registry through its API, and exported back."""
