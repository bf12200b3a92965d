# exporter: the export service, for docker-compose.yml (PostgreSQL runs as the `db` service).
# The base image is pinned by digest (the multi-arch index that python:3.11-slim named on
# 2026-10-06: CPython 3.11.17 on Debian trixie), so a rebuild cannot float onto a moved tag;
# to move it, resolve the tag beside it again and replace both.
FROM python:3.11-slim@sha256:0dd364ba7e10242f07755449e3a3d0e35f9efd987952737b90def6709ab0c5ce

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

# Dependencies first, in a layer of their own: it is rebuilt only when the lock changes.
# requirements/runtime.txt pins every runtime dependency with its hashes (`make lock`; the
# .dockerignore lets only that lock file of requirements/ in), then the package itself goes
# in without resolving anything again.
COPY requirements/ requirements/
RUN pip install --require-hashes -r requirements/runtime.txt

COPY pyproject.toml README.md ./
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
