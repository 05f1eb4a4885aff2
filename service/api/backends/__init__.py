"""Generation backends behind one interface (service.api.backends.base.Backend).

- ``embedded``: transformers + peft in this process, dynamic batching (the default).
- ``vllm``: vLLM in-process or a remote vLLM OpenAI server; ``vllm`` is imported only there.
"""
