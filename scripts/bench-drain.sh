#!/usr/bin/env bash
# The side-by-side drain benchmark (bench/drain.py): celeriac against the Python Celery worker
# on the machine's Redis (broker db 8) or, with `--broker amqp`, its RabbitMQ (a queue and
# exchange of the benchmark's own, `bench-drain`, deleted before each setting and at the end);
# results always in Redis db 9. Both Redis dbs are flushed. Builds what is missing first (the
# release worker, the example components, the pinned Celery venv), then passes every argument
# on, e.g. `scripts/bench-drain.sh --tasks 2000` for a quick run or
# `scripts/bench-drain.sh --broker amqp` for RabbitMQ.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Build output goes to stderr, so stdout holds only the report.
{
    scripts/ensure-services.sh
    scripts/build-examples.sh   # also runs `cargo build --release --locked -p celeriac`
    scripts/install-interop-venv.sh
} >&2
exec target/interop-venv/bin/python bench/drain.py "$@"
