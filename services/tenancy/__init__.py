"""Tenancy shared by every door: API keys as tenants, their limits (in-process or in
Redis, one budget across edges and routers) and their usage. The edge (HTTP) and the
router (gRPC) each answer a refusal in their own protocol."""
