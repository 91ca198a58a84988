# The llmpulse worker, CLI and traffic generator, and the alert-log webhook receiver
# (used by docker-compose.yml). Pinned base image; runs as an unprivileged user.
FROM python:3.11.14-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmpulse llmpulse
COPY ingest ingest
COPY processors processors
COPY schemas schemas
COPY dashboards dashboards
RUN pip install --no-cache-dir ".[worker,otel]"
COPY deploy/alert-log/alert_log.py /opt/llmpulse/alert_log.py
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin llmpulse \
    && mkdir -p /var/lib/llmpulse \
    && chown llmpulse:llmpulse /app /var/lib/llmpulse
ENV LLMPULSE_STATE_DIR=/var/lib/llmpulse
USER llmpulse
ENTRYPOINT ["llmpulse"]
CMD ["worker"]
