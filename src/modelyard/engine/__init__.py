"""Engines: the built-in multi-LoRA CPU engine, speaking the OpenAI API plus vLLM's runtime LoRA API."""
