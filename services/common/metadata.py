"""gRPC metadata keys shared by edge, router and engine."""

MODEL = "tera-model"
ROUTING_KEY = "tera-routing-key"
# Trailing metadata on INVALID_ARGUMENT: the request field at fault.
ERROR_PARAM = "tera-error-param"
# Request metadata: "off" opts a call out of mid-stream resume (see router/resume.py).
RESUME = "tera-resume"
# Trailing metadata set by a draining engine on the streams it hands off at the grace.
HANDOFF = "tera-handoff"
# Fair sharing (set by the edge from the catalog's key; trusted from internal callers):
# the tenant (the key's name), its share weight, its class, and its estimated tokens.
TENANT = "tera-tenant"
WEIGHT = "tera-weight"
PRIORITY = "tera-priority"
COST = "tera-cost"
