"""Pydantic models shared by handlers, logic and the CLI."""
