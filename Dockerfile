# exporter: the export service, for docker-compose.yml (PostgreSQL runs as the `db` service).
FROM python:3.11-slim

# MALLOC_ARENA_MAX: glibc gives every thread that allocates its own arena; with the export
# threads that kept up to ~6 MB more RSS (bench/memory.py), so two arenas it is.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2 \
    EXPORT_DIR=/app/exports \
    BIND=0.0.0.0:8080

WORKDIR /app

# The service runs as this user, never as root; it owns only the exports folder.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin exporter \
    && mkdir -p /app/exports \
    && chown 10001 /app/exports

# Dependencies first, in a layer of their own: it is rebuilt only when pyproject.toml
# changes. A stub package stands in for the source so that pip resolves them alone.
COPY pyproject.toml README.md ./
RUN mkdir -p exporter seeds \
    && touch exporter/__init__.py seeds/init.sql \
    && pip install . \
    && pip uninstall --yes exporter \
    && rm -rf exporter seeds

COPY seeds/ seeds/
COPY exporter/ exporter/
RUN pip install --no-deps .

USER 10001
VOLUME ["/app/exports"]
EXPOSE 8080

# No curl in the slim image: Python itself asks /health.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]

# The server is PID 1 (exec form, no shell): SIGTERM reaches it, it stops accepting, cancels
# running exports (their .part files removed, the jobs recorded) and exits.
STOPSIGNAL SIGTERM
CMD ["exporter", "serve"]
