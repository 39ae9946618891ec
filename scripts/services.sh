#!/usr/bin/env bash
# Checks PostgreSQL, Redis and RabbitMQ on loopback and starts any that is down,
# with the commands this kind of machine uses to start them. Idempotent.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
    local deadline=$((SECONDS + $3))
    until up "$2"; do
        if ((SECONDS >= deadline)); then
            echo "services: $1 did not come up on port $2" >&2
            return 1
        fi
        sleep 1
    done
    echo "services: $1 up on port $2"
}

if ! up 5432; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! up 6379; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! up 5672; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
fi
wait_for PostgreSQL 5432 60
wait_for Redis 6379 30
wait_for RabbitMQ 5672 120
