"""The edge and the router in one process (`python -m services.gateway`)."""
