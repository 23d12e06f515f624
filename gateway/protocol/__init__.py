"""OpenAI wire models. They import nothing else from this project."""
