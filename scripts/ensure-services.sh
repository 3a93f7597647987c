#!/usr/bin/env bash
# Makes sure the servers the integration tests talk to are up: Redis on 127.0.0.1:6379 and
# RabbitMQ on 127.0.0.1:5672. Starts a stopped one the way this machine kind starts it, and
# fails loudly (exit 1, naming the server) when one cannot be reached.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
    local name=$1 port=$2 seconds=$3
    for _ in $(seq "$seconds"); do
        port_open "$port" && return 0
        sleep 1
    done
    echo "ensure-services: $name is not reachable on 127.0.0.1:$port" >&2
    return 1
}

if ! port_open 6379; then
    echo "ensure-services: starting redis-server"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis 6379 30

if ! port_open 5672; then
    echo "ensure-services: starting rabbitmq-server"
    rabbitmq-server -detached
fi
wait_for RabbitMQ 5672 90

echo "ensure-services: Redis and RabbitMQ are up"
