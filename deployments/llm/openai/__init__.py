"""The OpenAI wire format: request bodies (`protocol`), their conversion to backend
requests, responses and chunks, server-sent events, the per-choice backend
streams, OpenAI-shaped errors and the FastAPI routes (`routes`)."""
