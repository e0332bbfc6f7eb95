"""OpenAI Chat Completions <-> AG-UI: loom's graphs for clients that speak only the OpenAI protocol."""
