# syntax=docker/dockerfile:1
# One image for every service (decider, reward consumer, projector, dashboard, `mab` CLI).

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv
WORKDIR /app
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --no-dev --extra services --extra dashboard
# Every package the wheel lists (pyproject [tool.hatch.build.targets.wheel]).
COPY schemas ./schemas
COPY bandit_core ./bandit_core
COPY stream_runtime ./stream_runtime
COPY services ./services
COPY dashboard ./dashboard
COPY demo_traffic ./demo_traffic
COPY mab_cli ./mab_cli
COPY deploy ./deploy
COPY bench ./bench
RUN uv sync --frozen --no-dev --no-editable --extra services --extra dashboard

FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 mab \
    && useradd --system --uid 10001 --gid mab --home-dir /app --shell /usr/sbin/nologin mab
WORKDIR /app
COPY --from=build --chown=mab:mab /app/.venv /app/.venv
# Source next to the venv: `streamlit run dashboard/app.py` needs the file path.
COPY --chown=mab:mab schemas ./schemas
COPY --chown=mab:mab bandit_core ./bandit_core
COPY --chown=mab:mab stream_runtime ./stream_runtime
COPY --chown=mab:mab services ./services
COPY --chown=mab:mab dashboard ./dashboard
COPY --chown=mab:mab demo_traffic ./demo_traffic
COPY --chown=mab:mab mab_cli ./mab_cli
COPY --chown=mab:mab deploy ./deploy
# The dashboard's simulator playground offers these scenario files.
COPY --chown=mab:mab scenarios ./scenarios
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER mab
EXPOSE 8000 8501
CMD ["uvicorn", "services.decider.app:app", "--host", "0.0.0.0", "--port", "8000"]
