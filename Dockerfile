# The llmpulse worker, CLI and traffic generator (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmpulse llmpulse
COPY ingest ingest
COPY processors processors
COPY schemas schemas
COPY dashboards dashboards
RUN pip install --no-cache-dir ".[worker,otel]"
ENTRYPOINT ["llmpulse"]
CMD ["worker"]
