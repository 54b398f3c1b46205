# One image for Aether's Python services (orchestrator, AI core, dashboard, agent); docker-compose.yml picks
# the command. The dashboard's npm packages are fetched in a first stage, so the image needs no Node.js.
FROM node:20-bookworm-slim AS dashboard-packages
WORKDIR /src/dashboard
COPY dashboard/ ./
RUN if [ -f package-lock.json ]; then npm ci --omit=dev --no-audit --no-fund; \
    elif [ -f package.json ]; then npm install --omit=dev --no-audit --no-fund; fi \
    && mkdir -p node_modules

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AETHER_CREDENTIALS=/run/aether/credentials.env
# An unprivileged account runs every service; state (models, agent work folders) lives under /var/lib/aether.
RUN groupadd --system --gid 10001 aether \
    && useradd --system --uid 10001 --gid aether --home-dir /var/lib/aether --create-home --shell /usr/sbin/nologin aether
WORKDIR /app
COPY . /app
COPY --from=dashboard-packages /src/dashboard/node_modules /app/dashboard/node_modules
# Installed in place (-e): the services find migrations/ and dashboard/static/ next to their code.
RUN pip install -e . \
    && mkdir -p /app/.aether /var/lib/aether/models /var/lib/aether/agent \
    && chown -R aether:aether /app/.aether /var/lib/aether
USER aether
EXPOSE 8080 8000 3000 9501
CMD ["python", "-m", "orchestrator"]
