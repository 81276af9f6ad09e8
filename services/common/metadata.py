"""gRPC metadata keys shared by edge, router and engine."""

MODEL = "tera-model"
ROUTING_KEY = "tera-routing-key"
# Trailing metadata on INVALID_ARGUMENT: the request field at fault.
ERROR_PARAM = "tera-error-param"
