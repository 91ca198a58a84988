"""llmpulse: streaming observability for LLM applications."""
