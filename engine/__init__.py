"""quota-engine: run OpenAI-style API calls at the highest rate your quota allows."""
