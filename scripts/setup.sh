#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine.
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v python3 >/dev/null || need+=(python3)
command -v unshare >/dev/null && command -v setsid >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v tmux >/dev/null || need+=(tmux)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# The mover TLS test captures the mover link (tests/mover_tls.rs).
command -v tcpdump >/dev/null || [ -x /usr/sbin/tcpdump ] || need+=(tcpdump)
# systemd-analyze checks the service unit in dist/.
command -v systemd-analyze >/dev/null || need+=(systemd)
# Debian's PostgreSQL server (the postgres test runs it in a partition);
# the package's own cluster is not used.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
# The console's browser test (crates/cli/tests/console_browser.rs) drives
# Debian's Chromium through its ChromeDriver over plain WebDriver HTTP.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# certutil: the browser test trusts the lab's site CA in a fresh NSS db.
command -v certutil >/dev/null || need+=(libnss3-tools)
# The console tests call its API with curl.
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
