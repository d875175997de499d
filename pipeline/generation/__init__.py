"""Answering: prompts, LLM backends, the vLLM supervisor and the LlamaIndex chat engine."""
