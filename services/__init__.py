"""Tera: an OpenAI-compatible LLM gateway (edge -> router -> engine)."""
