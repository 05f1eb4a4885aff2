"""The generator's prompt: the query s and the behavior sentence b, in the model's chat
template. Serving and training MUST build prompts with this one function, or the policy
is trained on one distribution and served on another.

The behavior goes into the system message ("instructions", as the paper puts it in
"Behavior in Natural-Language Form"); the query is the user turn.
"""

from __future__ import annotations

from typing import Any

SYSTEM_TEMPLATE = (
    "You are a helpful assistant. Write the answer so that this describes how users react to it: {behavior}"
)


def build_messages(query: str, behavior: str) -> list[dict[str, str]]:
    messages = []
    if behavior:
        messages.append({"role": "system", "content": SYSTEM_TEMPLATE.format(behavior=behavior.strip())})
    messages.append({"role": "user", "content": query.strip()})
    return messages


def render_prompt(tokenizer: Any, query: str, behavior: str) -> str:
    """Prompt text ending with the assistant header, ready for generation."""
    messages = build_messages(query, behavior)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Models without a chat template (e.g. the GPT-2 benchmark config): a plain layout.
    system = f"{messages[0]['content']}\n" if behavior else ""
    return f"{system}Question: {query.strip()}\nAnswer:"
