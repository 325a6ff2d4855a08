# gmem-broker service image.
#
#   docker build -t gmem-broker .
#   docker compose up            # with PostgreSQL, see docker-compose.yml
#
# Configuration is by GMEM_BROKER_* environment variables (see service/settings.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system gmem \
 && useradd --system --gid gmem --home-dir /var/lib/gmem-broker --shell /usr/sbin/nologin gmem \
 && mkdir -p /var/lib/gmem-broker \
 && chown gmem:gmem /var/lib/gmem-broker

WORKDIR /app

# Dependencies first (pinned), so code changes don't invalidate this layer.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md ./
COPY service/ ./service/
COPY migrations/ ./migrations/
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info

# Listen on all interfaces inside the container; the default SQLite database
# (used when no PostgreSQL URL is given) lives in the gmem-owned data dir.
ENV GMEM_BROKER_HOST=0.0.0.0 \
    GMEM_BROKER_PORT=8000 \
    GMEM_BROKER_DATABASE_URL=sqlite:////var/lib/gmem-broker/gmem-broker.db

VOLUME ["/var/lib/gmem-broker"]

USER gmem

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GMEM_BROKER_PORT', '8000'), timeout=4)" || exit 1

CMD ["sh", "-c", "gmem-broker db upgrade && exec gmem-broker serve"]
