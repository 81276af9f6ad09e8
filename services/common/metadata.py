"""gRPC metadata keys shared by edge, router and engine."""

MODEL = "tera-model"
ROUTING_KEY = "tera-routing-key"
# Trailing metadata on INVALID_ARGUMENT: the request field at fault.
ERROR_PARAM = "tera-error-param"
# The end user's tenant, set by the edge; the router trusts it only from a caller whose
# client certificate names an edge (RouterConfig.auth.edge_identities).
TENANT = "tera-tenant"
# What an internal caller presents instead: its own tenant key.
AUTHORIZATION = "authorization"
