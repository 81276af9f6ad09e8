"""What the Tera dashboards show: one line per panel, using only metric names Tera exports
(edge, router, engine; vLLM's own `vllm:*` where the engine runs vLLM).

Queries use Grafana's variables: `$model`, `$key` (multi-value regexes) and
`$__rate_interval`. generate.py turns these lists into dashboard JSON; the tests evaluate
every query against a real Prometheus scraping a running stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class P:
    title: str
    unit: str
    targets: tuple[Q, ...]
    kind: str = "timeseries"  # or "stat", "table"
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str


def panel(title: str, unit: str, *targets: Q, kind: str = "timeseries", about: str = "") -> P:
    return P(title, unit, targets, kind, about)


def rate(metric: str, selector: str = "", by: str = "") -> str:
    grouping = f"sum by ({by}) " if by else "sum "
    return f"{grouping}(rate({metric}{{{selector}}}[$__rate_interval]))"


def quantile(q: float, histogram: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', selector, f'le, {by}')})"


def ratio(metric: str, bad: str, selector: str, by: str) -> str:
    """Share of `metric` matching `bad`; 0 (not absent) while nothing is bad."""
    everything = rate(metric, selector, by)
    failing = rate(metric, f"{selector}, {bad}" if selector else bad, by)
    return f"({failing} or {everything} * 0) / {everything}"


def p50_p99(histogram: str, by: str, selector: str = "") -> tuple[Q, Q]:
    return (
        Q(quantile(0.5, histogram, by, selector), f"p50 {{{{{by}}}}}"),
        Q(quantile(0.99, histogram, by, selector), f"p99 {{{{{by}}}}}"),
    )


M = 'model=~"$model"'
EDGE = "tera_edge_requests_total"
K = 'key=~"$key"'

# fmt: off
FLEET: list[P | Row] = [
    Row("Traffic"),
    panel("Requests/s by status", "reqps", Q(rate(EDGE, M, "status"), "{{status}}")),
    panel("5xx ratio by endpoint", "percentunit", Q(ratio(EDGE, 'status=~"5.."', M, "endpoint"), "{{endpoint}}")),
    panel("Output tokens/s by model", "short", Q(rate("tera_edge_tokens_total", f'kind="completion", {M}', "model"), "{{model}}")),
    panel("In flight at the edge", "short", Q("sum by (endpoint) (tera_edge_in_flight)", "{{endpoint}}")),
    Row("Latency (exemplars link to Jaeger traces)"),
    panel("Time to first token", "s", *p50_p99("tera_edge_time_to_first_token_seconds", "model", M)),
    panel("Inter-token latency", "s", *p50_p99("tera_edge_inter_token_latency_seconds", "model", M)),
    panel("Request duration p99 by endpoint", "s", Q(quantile(0.99, "tera_edge_request_duration_seconds", "endpoint", M), "{{endpoint}}")),
    panel("Router: first message p99", "s", Q(quantile(0.99, "tera_router_first_message_seconds", "model", M), "{{model}}")),
    Row("Router and replicas"),
    panel("Replica up (serving, not ejected)", "short", Q("tera_router_replica_up", "{{replica}}")),
    panel("Ready replicas per model", "short", Q(f"tera_router_model_ready_replicas{{{M}}}", "{{model}}")),
    panel("Ejections", "short", Q("sum by (replica) (increase(tera_router_replica_ejections_total[$__rate_interval]))", "{{replica}}")),
    panel("Calls in flight per replica", "short", Q("tera_router_replica_in_flight", "{{replica}}")),
    panel("Queued prefill per replica (prompt tokens sent, not yet answered)", "short", Q("tera_router_replica_prefill_tokens", "{{replica}}")),
    panel("Arrivals/s per replica (where new prefix groups go)", "reqps", Q("max by (replica) (tera_router_replica_arrivals_per_s)", "{{replica}}"), about="Calls each engine admitted per second recently (10 s half-life), from every router, as the engine measures it. cache_aware sends a prompt that no replica has cached to the lowest (rates within 25 % tie): a replica far above the rest holds a hot prefix group."),
    panel("Relayed calls/s by gRPC code", "reqps", Q(rate("tera_router_requests_total", M, "code"), "{{code}}")),
    panel("Retries/s by reason", "reqps", Q(rate("tera_router_retries_total", "", "reason"), "{{reason}}")),
    panel("Retries refused by the retry budget", "reqps", Q(rate("tera_router_retry_budget_exhausted_total", M, "model"), "{{model}}")),
    panel("Retry budget left per router", "short", Q("min by (instance) (tera_router_retry_budget_tokens)", "{{instance}}"), about="Retries each router's budget allows now (every request deposits retry.budget_ratio, each retry spends one). Near zero while retries or overdue first messages rise: replicas fail or stall faster than the traffic pays for moving calls."),
    panel("First messages awaited past the timeout", "reqps", Q(rate("tera_router_first_message_overdue_total", M, "model"), "{{model}}"), about="Attempts silent past the router's first_message_timeout_s that could not move (no other replica with room, no attempt or retry budget left), so the router waited on instead of failing them. Above zero: prefill queues run deeper than that limit."),
    panel("Hedges/s: sent, won by the hedge, cancelled", "reqps", Q(rate("tera_router_hedges_total", M, "model"), "sent {{model}}"), Q(rate("tera_router_hedge_wins_total", M, "model"), "won {{model}}"), Q(rate("tera_router_hedge_cancelled_total", M, "model"), "cancelled {{model}}")),
    panel("Resumes/s by reason (streams continued on another replica)", "reqps", Q(rate("tera_router_resumes_total", "", "reason"), "{{reason}}")),
    panel("Resume gap p50 / p99 (cut to next token)", "s", Q("histogram_quantile(0.5, sum by (le) (rate(tera_router_resume_gap_seconds_bucket[$__rate_interval])))", "p50"), Q("histogram_quantile(0.99, sum by (le) (rate(tera_router_resume_gap_seconds_bucket[$__rate_interval])))", "p99")),
    panel("Fair queue: waiting requests by class", "short", Q(f"sum by (model, priority) (tera_router_queue_length{{{M}}})", "{{model}} {{priority}}")),
    panel("Fair queue: shed/s by reason", "reqps", Q(rate("tera_router_shed_total", M, "reason"), "{{reason}}")),
    Row("Engines"),
    panel("Engine in flight and limit", "short", Q("sum by (instance) (tera_engine_in_flight)", "in flight {{instance}}"), Q("sum by (instance) (tera_engine_max_in_flight)", "limit {{instance}}")),
    panel("Engine queue (waiting)", "short", Q("sum by (instance) (tera_engine_waiting)", "{{instance}}")),
    panel("Engine running", "short", Q("sum by (instance) (tera_engine_running)", "{{instance}}")),
    panel("KV cache use", "percentunit", Q("max by (instance) (tera_engine_kv_cache_usage)", "{{instance}}")),
    panel("Prefix cache hit ratio (vLLM)", "percentunit", Q(f'{rate("vllm:prefix_cache_hits_total", "", "instance")} / {rate("vllm:prefix_cache_queries_total", "", "instance")}', "{{instance}}")),
    panel("Prompt tokens served from cache, by replica (router's view)", "percentunit", Q(f'{rate("tera_router_cached_prompt_tokens_total", "", "replica")} / {rate("tera_router_prompt_tokens_total", "", "replica")}', "{{replica}}")),
    panel("vLLM queue time p99", "s", Q(quantile(0.99, "vllm:request_queue_time_seconds", "model_name"), "{{model_name}}")),
    Row("Processes"),
    panel("Garbage collection: share of time stopped, by process", "percentunit", Q(rate("tera_gc_pause_seconds_sum", "", "job, instance"), "{{job}} {{instance}}"), about="Each collection stops the process's event loop; the start-up heap is frozen, so this stays near zero. A rise means a growing heap (a leak) is being walked."),
    Row("Limits and speech"),
    panel("429s/s by model", "reqps", Q(rate(EDGE, f'status="429", {M}', "model"), "{{model}}")),
    panel("Rate limiter failures (failing open)", "short", Q("sum (rate(tera_edge_limiter_failures_total[$__rate_interval]))", "failures/s")),
    panel("Speech requests/s by status", "reqps", Q(rate(EDGE, 'endpoint="/v1/audio/speech"', "status"), "{{status}}")),
]

TENANTS: list[P | Row] = [
    Row("Per key"),
    panel("Requests/s by key", "reqps", Q(rate("tera_key_requests_total", K, "key"), "{{key}}")),
    panel("Requests/s by key and status", "reqps", Q(rate("tera_key_requests_total", K, "key, status"), "{{key}} {{status}}")),
    panel("Tokens/s by key", "short", Q(rate("tera_key_tokens_total", K, "key, kind"), "{{key}} {{kind}}")),
    panel("429s/s by key", "reqps", Q(rate("tera_key_requests_total", f'status="429", {K}', "key"), "{{key}}")),
    panel("Error ratio by key", "percentunit", Q(ratio("tera_key_requests_total", 'status=~"[45].."', K, "key"), "{{key}}")),
    Row("Usage against limits"),
    panel("Requests/min against limit", "percentunit", Q(f'{rate("tera_key_requests_total", K, "key")} * 60 / on (key) max by (key) (tera_key_limit{{limit="requests_per_minute", {K}}})', "{{key}}")),
    panel("Tokens/min against limit", "percentunit", Q(f'{rate("tera_key_tokens_total", K, "key")} * 60 / on (key) max by (key) (tera_key_limit{{limit="tokens_per_minute", {K}}})', "{{key}}")),
    panel("Configured limits", "short", Q(f"tera_key_limit{{{K}}}", "{{key}} {{limit}}"), kind="table"),
    panel("Tokens by key and model over the range", "short", Q(f"sum by (key, model) (increase(tera_key_tokens_total{{{K}}}[$__range]))", "{{key}} {{model}}"), kind="table"),
]
# fmt: on
