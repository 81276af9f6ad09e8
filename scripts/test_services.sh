#!/usr/bin/env bash
# Servers the test suite starts itself: redis-server (Debian's package) for the Redis
# limit tests, prometheus for the observability tests. Installed when missing and we
# may. Locally, if one cannot be installed, its tests skip and say why; in CI
# (CI=true) a missing service is an error here, and the tests fail rather than skip.
set -u
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test-services] installing redis-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
      >/dev/null 2>&1 || echo "[test-services] could not install redis-server" >&2
  fi
fi
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "[test-services] redis-server is missing and CI=true: failing" >&2
    exit 1
  fi
  echo "[test-services] redis-server is missing: the Redis tests will skip" >&2
fi
# prometheus and promtool (Debian's package) for the dashboard and alert-rule tests; the
# tests start their own prometheus on a free port: the package's service plays no part.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test-services] installing prometheus" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) \
      >/dev/null 2>&1 || echo "[test-services] could not install prometheus" >&2
  fi
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "[test-services] prometheus is missing and CI=true: failing" >&2
    exit 1
  fi
  echo "[test-services] prometheus is missing: the dashboard tests will skip" >&2
fi
exit 0
