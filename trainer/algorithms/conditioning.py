"""Which behavior sentence goes into the prompt when the reward does not read one.

RLHB conditions the policy on each record's behavior sentence, because its discriminator
judges (s, a; b). The baselines (RLHBC, RLHF, SFT, PRO) reward an answer for the query
alone, so conditioning on every logged sentence would teach the policy to ignore b. Their
default is the sentence the server puts in the prompt at serving time, the most preferred
one, so training and serving see the same prompt; the alternatives are each record's own
sentence, or no behavior sentence at all (a plain chat prompt, as in the papers' baselines).
No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core.behavior.encoding import Encoding
from schemas.behavior import BehaviorRecord

PROMPT_BEHAVIORS = ("preferred", "record", "none")


def check_prompt_behavior(mode: str) -> None:
    if mode not in PROMPT_BEHAVIORS:
        raise ValueError(
            f"prompt_behavior must be one of {PROMPT_BEHAVIORS}; got {mode!r}. 'preferred' matches what the "
            "server sends by default"
        )


def behavior_chooser(
    records: Sequence[BehaviorRecord], mode: str, encoding: Encoding | None = None
) -> Callable[[BehaviorRecord], str]:
    """record -> the behavior sentence to put in its training prompt.

    'preferred': the encoding's most preferred sentence (what the server sends by default;
    ``core.behavior.encoding.most_preferred_sentence``); 'record': the record's own
    sentence; 'none': ''.
    """
    check_prompt_behavior(mode)
    if mode == "record":
        return lambda r: r.behavior_text
    if mode == "none":
        return lambda r: ""
    from trainer.records import BehaviorPool

    preferred = BehaviorPool(records, encoding).most_preferred()
    return lambda r: preferred
