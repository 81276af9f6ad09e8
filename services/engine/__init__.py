"""The engine: hosts a model (vLLM, or a speech model) behind the tera.v1.Engine gRPC service."""
