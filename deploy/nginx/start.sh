#!/bin/sh
# compose.yaml starts nginx with this script (`sh start.sh`, so no execute bit is needed on the
# bind-mounted file). It points nginx's resolver at the container's first nameserver, then runs
# nginx in the foreground as the image's own command does.
#
# That first nameserver is the engine's DNS, which answers `api` with the replicas: 127.0.0.11
# on Docker, the network's gateway on podman (aardvark-dns). Any nameserver after it is the
# host's, which answers "not found" for `api`; nginx asks every resolver it is given in turn,
# so it must be given the first one only. Written at start rather than fixed in the config
# because the address differs between engines and networks.
set -eu

resolv_conf=/etc/resolv.conf
# coordinator.conf includes this file in its server block.
resolver_conf=/etc/nginx/coordinator-resolver.conf

nameserver=$(sed -n 's/^[[:space:]]*nameserver[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\1/p' \
    "$resolv_conf" | head -n 1)
if [ -z "$nameserver" ]; then
    echo "start.sh: no nameserver in $resolv_conf, so nginx could not resolve api" >&2
    exit 1
fi
# nginx wants an IPv6 address in brackets (a bare one would read as address:port).
case $nameserver in
    *:*) nameserver="[$nameserver]" ;;
esac
echo "resolver $nameserver valid=5s ipv6=off;" > "$resolver_conf"
echo "start.sh: nginx resolves api with $nameserver"

exec nginx -g 'daemon off;'
