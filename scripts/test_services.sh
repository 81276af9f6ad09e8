#!/usr/bin/env bash
# Servers the test suite starts itself: redis-server (Debian's package) for the shared
# rate-limit test, prometheus for the observability tests. Installed when missing and we
# may; otherwise those tests are skipped and say why.
set -u
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test-services] installing redis-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
      >/dev/null 2>&1 || echo "[test-services] could not install redis-server" >&2
  fi
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
exit 0
