"""gRPC metadata keys shared by edge, router and engine."""

MODEL = "tera-model"
ROUTING_KEY = "tera-routing-key"
# Trailing metadata on INVALID_ARGUMENT: the request field at fault.
ERROR_PARAM = "tera-error-param"
# Request metadata: "off" opts a call out of mid-stream resume (see router/resume.py).
RESUME = "tera-resume"
# Request metadata on a multiplexed stream, "1": the caller takes keepalive frames while
# the router waits on its behalf (MuxFrame.keepalive; the edge's idle limit hears them).
KEEPALIVE = "tera-keepalive"
# Trailing metadata set by a draining engine on the streams it hands off at the grace.
HANDOFF = "tera-handoff"
# Fair sharing and tenancy, set by the edge from the catalog's key: the tenant (the key's
# name), its share weight, its class, and its estimated tokens. With router auth on, the
# router trusts the tenant only from a caller whose client certificate names an edge
# (RouterConfig.auth.edge_identities).
# The router forwards them to the engine, which schedules by the class in vLLM.
TENANT = "tera-tenant"
WEIGHT = "tera-weight"
PRIORITY = "tera-priority"
COST = "tera-cost"
# The four together: what a router with auth replaces with the values it vouches for.
TENANCY = (TENANT, WEIGHT, PRIORITY, COST)
# What an internal caller presents instead: its own tenant key.
AUTHORIZATION = "authorization"
