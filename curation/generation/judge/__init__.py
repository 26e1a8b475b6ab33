"""The ``judge`` step: an LLM or VLM rates each turn (or sample) of sft records on named criteria."""
