"""The edge: OpenAI-compatible HTTP (JSON and SSE) in front of the router's gRPC API."""
